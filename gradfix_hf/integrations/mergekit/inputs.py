"""θ_A and votes, read by tensor name: what mergekit does not hand a merge method. θ_A of each fine-tune is
opened once per merge with gradfix_hf's reader, the votes files are loaded once, and each tensor of the merge
is looked up in both under mergekit's name, its aliases and (when tied) its tied names.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ...errors import VotesFileError
from ...hub import looks_local, resolve_model
from ...methods import MergeMethod
from ...recipe import ModelRef
from ...storage import CheckpointReader, VotesFile, align_names


class Source:
    """θ_A of one fine-tune: its reader and the name conventions used to line it up with mergekit's names."""

    def __init__(self, reference: str):
        path, revision = reference, None
        if not looks_local(reference) and "@" in reference:
            path, revision = reference.rsplit("@", 1)
        self.reference = reference
        self.model = resolve_model(ModelRef(path=path, revision=revision), role=f"source {reference}")
        self.reader = CheckpointReader(self.model)
        config = _config(self.model.local_dir)
        self.prefix = _base_model_prefix(config)
        self.tied = _tied(config)

    def key(self, name: str, names: "WeightNames") -> Optional[str]:
        aliases = list(names.aliases) + (list(names.tied) if self.tied else [])
        return align_names(self.reader, [name], self.prefix, {name: aliases}).get(name)


def _config(folder: Path):
    import transformers

    try:
        return transformers.AutoConfig.from_pretrained(str(folder))
    except (ValueError, OSError, KeyError):
        return None


def _base_model_prefix(config: Any) -> str:
    """``bert``, ``model``, ``transformer``...: what a task model adds to a base-model checkpoint's names."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        return MODEL_MAPPING[type(config)].base_model_prefix or ""
    except (KeyError, AttributeError):
        return ""


def _tied(config: Any) -> bool:
    """Whether the output embedding is stored under the input embedding's name (tied weights)."""
    if config is None:
        return False
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(getattr(text, "tie_word_embeddings", False))


class WeightNames:
    """Other names of one weight in the merge's architecture: true aliases (always tried) and tied names
    (tried only for a checkpoint whose output embedding is tied, as mergekit reads the other inputs)."""

    def __init__(self, aliases: Sequence[str] = (), tied: Sequence[str] = (), base_tied: bool = False):
        self.aliases, self.tied, self.base_tied = tuple(aliases), tuple(tied), base_tied

    def for_votes(self) -> list[str]:
        return list(self.aliases) + (list(self.tied) if self.base_tied else [])


def open_source(reference: str) -> Source:
    """θ_A's reader, opened once per merge (re-opened when a local checkpoint's files change)."""
    return _cached_source(reference, _stamp(reference))


@functools.lru_cache(maxsize=16)
def _cached_source(reference: str, stamp: tuple) -> Source:
    return Source(reference)


def _stamp(reference: str) -> tuple:
    folder = Path(reference).expanduser()
    if not folder.is_dir():
        return ()
    files = sorted(p for p in folder.iterdir() if p.suffix in (".json", ".safetensors"))
    return tuple((p.name, p.stat().st_mtime_ns) for p in files)


@functools.lru_cache(maxsize=64)
def _votes(path: str, stamp: tuple):
    return VotesFile.load(path)


def load_votes(path: str):
    """A votes file, loaded once per merge (cached on path, size and modification time)."""
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise VotesFileError(f"{path}: votes file not found (write one with `gradfix votes RECIPE -o {path}`).")
    stat = resolved.stat()
    return _votes(str(resolved.resolve()), (stat.st_size, stat.st_mtime_ns))


def same_file(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def votes_aggregation(params: Mapping[str, Any], method: MergeMethod) -> str:
    """How the votes must have been aggregated for these parameters (see :func:`check_votes`)."""
    return "mean" if method.sign_source(params) == "mean-votes" else "majority"


def check_votes(votes, path: str, aggregation: str) -> None:
    """Majority votes for every mask but ``mean``, which needs the sign of the summed gradient."""
    if votes.metadata["aggregation"] != aggregation:
        raise VotesFileError(f"{path}: votes were aggregated with {votes.metadata['aggregation']!r} but this mask "
                             f"needs {aggregation!r} (mask 'mean' needs votes of a recipe with "
                             "`method: {mask: mean}`).")


@functools.lru_cache(maxsize=16)
def _architecture_names(base: Any) -> tuple[dict, bool]:
    """{weight: (aliases, tied names)} of the base model's mergekit architecture, and whether the base is tied,
    so θ_A and the votes are read the way mergekit read the other inputs (e.g. a tied ``lm_head.weight``)."""
    try:
        from mergekit.architecture import arch_info_for_config

        config = base.config()  # a mergekit ModelReference (merge_state_dicts callers may use other ids)
        arch = arch_info_for_config(config)
        weights = arch.all_weights(config) if arch is not None else []
    except Exception:  # an architecture mergekit infers from names has no aliases to offer  # noqa: BLE001
        return {}, False
    return {w.name: (tuple(w.aliases or ()), tuple(w.tied_names or ())) for w in weights}, _tied(config)


def weight_names(base: Any, name: str) -> "WeightNames":
    table, base_tied = _architecture_names(base)
    aliases, tied = table.get(name, ((), ()))
    return WeightNames(aliases, tied, base_tied)


def vote_key(votes, name: str, prefix: str, names: WeightNames) -> Optional[str]:
    return align_names(votes.votes, [name], prefix, {name: names.for_votes()}).get(name)  # type: ignore[arg-type]


def not_voted_key(votes, name: str, prefix: str, names: WeightNames) -> Optional[str]:
    """The name under which ``votes`` lists ``name`` as left out of the vote (τ_A ≡ 0 there), or None."""
    return align_names(dict.fromkeys(votes.not_voted), [name], prefix, {name: names.for_votes()}).get(name)
