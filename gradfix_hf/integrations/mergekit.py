"""GradFix merge methods for mergekit: :func:`register_methods` and the ``gradfix-mergekit-yaml`` command.

mergekit hands a merge method one output tensor at a time, from its base model (here θ_B, the target) and
from each fine-tune. GradFix also needs θ_A, the pre-trained model each fine-tune started from (which is not
mergekit's base), and the target's gradient-sign votes. Both are string parameters of each fine-tune
(``source``, ``votes``): the kernel reads θ_A's tensor (memory-mapped, with gradfix_hf's reader and name
alignment) and the vote of the same name, and calls the per-tensor kernel of gradfix_hf's method registry,
the code ``gradfix run`` uses, so both front ends write the same tensors.

mergekit (LGPL-3.0-only) is imported lazily, here only, never copied. Nothing registers on
``import gradfix_hf``: call :func:`register_methods` or use the ``gradfix-mergekit-yaml`` command.
"""
from __future__ import annotations

import difflib
import functools
import logging
import math
import os
import sys
import threading
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from ..errors import CompatibilityError, GradFixError, RecipeError, VotesFileError, did_you_mean
from ..hub import looks_local, resolve_model
from ..methods import MergeMethod, TensorInputs
from ..methods import registered_methods as gradfix_registry
from ..recipe import ModelRef, read_yaml_mapping
from ..storage import CheckpointReader, VotesFile, align_names, check_finite

logger = logging.getLogger("gradfix_hf")
INSTALL_HINT = 'pip install "gradfix_hf[mergekit]"'
PAPER_URL = "https://arxiv.org/abs/2510.09658"
#: parameters every GradFix mergekit method has besides its own (shared: one value for the whole merge)
SHARED_EXTRA = ("alpha", "force")
_LOCK = threading.RLock()


def mergekit_name(name: str) -> str:
    """The mergekit name of a gradfix_hf method: ``gradfix`` stays, every other gets a ``gradfix_`` prefix
    (mergekit already has ``task_arithmetic`` and ``ties``, with other semantics)."""
    return name if name.startswith("gradfix") else f"gradfix_{name}"


def _mergekit():
    try:
        import mergekit.merge_methods as merge_methods
    except ImportError as exc:
        raise ImportError(f"gradfix_hf's mergekit methods need mergekit>=0.1.5,<0.2 ({exc}); install it with: "
                          f"{INSTALL_HINT}") from exc
    if not hasattr(merge_methods, "register") or not hasattr(merge_methods, "GroupMergeMethod"):
        from importlib.metadata import version

        raise ImportError(f"gradfix_hf's mergekit methods need mergekit>=0.1.5,<0.2 (the register() API); found "
                          f"mergekit {version('mergekit')}. Upgrade with: {INSTALL_HINT}")
    return merge_methods


# --- the parameters of each method ------------------------------------------------------------------------

def uses_votes(method: MergeMethod) -> bool:
    """Whether some parameter value makes ``method`` need a sign estimate (every masked method)."""
    return "mask" in method.parameter_names()


def per_model_parameters(method: MergeMethod) -> tuple[str, ...]:
    """Per fine-tune parameters: θ_A (``source``), the votes file and the task weight, as the method uses."""
    names = ["source"]
    if uses_votes(method):
        names.append("votes")
    if method.max_tasks != 1:
        names.append("weight")
    return tuple(names)


def shared_parameters(method: MergeMethod) -> tuple[str, ...]:
    return SHARED_EXTRA + tuple(method.parameter_names())


def _spec(method: MergeMethod):
    """mergekit's MergeMethodSpec of ``method``. The method's own parameters default to None (= not given),
    so gradfix_hf's validation sees exactly what the YAML set (e.g. ``density`` without ``merge: ties``)."""
    mk = _mergekit()
    from mergekit.merge_methods.base import ParameterSpec as MkParameter

    shared = [MkParameter("alpha", float, mk.ParameterScope.SHARED, 1.0, "output = θ_B + alpha·delta"),
              MkParameter("force", bool, mk.ParameterScope.SHARED, False, "allow alpha outside (0, 1]")]
    shared += [MkParameter(p.name, Optional[p.kind], mk.ParameterScope.SHARED, None, p.doc)
               for p in method.parameters]
    per_model = [MkParameter("source", str, mk.ParameterScope.NON_BASE, description="θ_A of this fine-tune "
                             "(local folder or Hub id): τ = fine-tune − θ_A")]
    if uses_votes(method):
        per_model.append(MkParameter("votes", Optional[str], mk.ParameterScope.NON_BASE, None,
                                     "votes file of the target for this task (gradfix votes -o FILE)"))
    if method.max_tasks != 1:
        per_model.append(MkParameter("weight", float, mk.ParameterScope.NON_BASE, 1.0, "task weight w_t"))
    return mk.MergeMethodSpec(
        name=mergekit_name(method.name), parameters=tuple(shared + per_model),
        contract=mk.InputContract(base=mk.BasePolicy.REQUIRED, min_non_base=method.min_tasks,
                                  max_non_base=method.max_tasks),
        pretty_name=method.pretty_name, reference_url=PAPER_URL,
        # gradfix_hf's kernels run on CPU in fp32 (as `gradfix run`); inputs stay where mergekit loaded them
        uses_accelerator=False,
    )


def _check_alpha(alpha: float, force: bool, where: str) -> None:
    if not math.isfinite(alpha):
        raise RecipeError(f"{where}.alpha: must be finite, got {alpha!r}.")
    if not force and not 0.0 < alpha <= 1.0:
        raise RecipeError(f"{where}.alpha: {alpha} is outside (0, 1]; set force: true to allow it.")


def validate_parameters(method: MergeMethod, values: Mapping[str, Any], where: str) -> dict:
    """gradfix_hf's validation of the given values, plus what a per-tensor mergekit kernel cannot run."""
    params = method.validate(values, where)
    if method.sign_source(params) == "oracle":
        raise RecipeError(f"{where}.mask: 'oracle' needs θ_B fine-tuned on each task, which the mergekit methods "
                          "do not read; use another mask, or run the recipe with `gradfix run`.")
    if method.needs_global_threshold(params):
        raise RecipeError(f"{where}.variant: TIES 'original' trims each whole task vector at one global threshold, "
                          "but mergekit merges one tensor at a time; use variant: paper (per-tensor trim) or "
                          "density: 1, or run the recipe with `gradfix run`, which supports it.")
    return params


@functools.lru_cache(maxsize=64)
def _validated(method_name: str, items: tuple, where: str) -> dict:
    return validate_parameters(gradfix_registry()[method_name], dict(items), where)


# --- θ_A and votes, read by tensor name -------------------------------------------------------------------

class _Source:
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

    def key(self, name: str, names: "_Names") -> Optional[str]:
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


class _Names:
    """Other names of one weight in the merge's architecture: true aliases (always tried) and tied names
    (tried only for a checkpoint whose output embedding is tied, as mergekit reads the other inputs)."""

    def __init__(self, aliases: Sequence[str] = (), tied: Sequence[str] = (), base_tied: bool = False):
        self.aliases, self.tied, self.base_tied = tuple(aliases), tuple(tied), base_tied

    def for_votes(self) -> list[str]:
        return list(self.aliases) + (list(self.tied) if self.base_tied else [])


def _source(reference: str) -> _Source:
    """θ_A's reader, opened once per merge (re-opened when a local checkpoint's files change)."""
    return _cached_source(reference, _stamp(reference))


@functools.lru_cache(maxsize=16)
def _cached_source(reference: str, stamp: tuple) -> _Source:
    return _Source(reference)


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


def _same_file(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def _aggregation(params: Mapping[str, Any], method: MergeMethod) -> str:
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


def weight_names(base: Any, name: str) -> "_Names":
    table, base_tied = _architecture_names(base)
    aliases, tied = table.get(name, ((), ()))
    return _Names(aliases, tied, base_tied)


def _vote_key(votes, name: str, prefix: str, names: _Names) -> Optional[str]:
    return align_names(votes.votes, [name], prefix, {name: names.for_votes()}).get(name)  # type: ignore[arg-type]


# --- the kernel --------------------------------------------------------------------------------------------

def merge_tensor(method: MergeMethod, name: str, base: torch.Tensor, finetuned: Sequence[torch.Tensor],
                 sources: Sequence[str], votes: Sequence[Optional[str]], weights: Sequence[float],
                 parameters: Mapping[str, Any], *, alpha: float = 1.0, force: bool = False,
                 names: Optional[_Names] = None, where: Optional[str] = None) -> torch.Tensor:
    """One output tensor: θ_B + α·delta, delta from gradfix_hf's kernel on τ_t = θ_t^ft − θ_A,t (fp32, CPU),
    cast back to the base tensor's dtype and device. ``parameters`` are the method's own (None = not given)."""
    where = where or f"merge_method {mergekit_name(method.name)!r} parameters"
    names = names or _Names()
    given = tuple(sorted((k, v) for k, v in parameters.items() if v is not None))
    _check_alpha(alpha, force, where)
    with _LOCK:
        params = dict(_validated(method.name, given, where))
        readers = [_source(s) for s in sources]
        keys = [r.key(name, names) for r in readers]
    if all(k is None for k in keys):
        return _new_tensor(method, name, finetuned, readers, votes, params, names)
    if any(k is None for k in keys):
        lacking = sources[keys.index(None)]
        raise CompatibilityError(f"tensor {name!r} is in some sources but not in {lacking}: the fine-tunes' sources "
                                 "must share one architecture to be merged.")
    taus = []
    for tensor, reader, key in zip(finetuned, readers, keys):
        with _LOCK:
            source = reader.reader.get_float(key)
        if tuple(source.shape) != tuple(tensor.shape):
            raise CompatibilityError(f"tensor {name!r}: shape {list(tensor.shape)} in the merge but "
                                     f"{list(source.shape)} in source {reader.reference} ({key!r}).")
        # θ_A goes through the same dtype mergekit gave the other inputs (a no-op unless `dtype:` differs)
        taus.append(tensor.detach().to("cpu", torch.float32) - source.to(tensor.dtype).to(torch.float32))
    kernel_name, signs, evidence, n_votes = _signs(method, name, params, votes, readers[0].prefix, names, base.shape)
    inputs = TensorInputs(kernel_name, taus, signs, evidence, [float(w) for w in weights], None, n_votes=n_votes)
    delta = method.delta(inputs, params)
    target = base.detach().to("cpu", torch.float32)
    return (target + alpha * delta).to(dtype=base.dtype, device=base.device)


def _signs(method: MergeMethod, name: str, params: Mapping[str, Any], votes: Sequence[Optional[str]],
           prefix: str, names: _Names, shape: torch.Size):
    """The tensor name gradfix_hf uses (the votes' key, for seeded masks), and each task's ŝ and evidence."""
    source = method.sign_source(params)
    if source is None:
        return name, [None] * len(votes), [None] * len(votes), [None] * len(votes)
    if any(not v for v in votes):
        raise RecipeError(f"merge_method {mergekit_name(method.name)!r}: mask {params['mask']!r} needs the target's "
                          "votes: set `votes: FILE` for every model (or once under the top-level parameters).")
    if method.shared_vote and len({_same_file(v) for v in votes}) > 1:
        raise RecipeError(f"merge_method {mergekit_name(method.name)!r} votes once for every source: give every "
                          f"model the same votes file (got {sorted(set(votes))}).")
    signs, evidence, n_votes, kernel_name = [], [], [], name
    for path in votes:
        with _LOCK:
            loaded = load_votes(path)
        check_votes(loaded, path, _aggregation(params, method))
        key = _vote_key(loaded, name, prefix, names)
        if key is None:
            close = difflib.get_close_matches(name, list(loaded.votes), n=2, cutoff=0.6)
            raise VotesFileError(f"{path}: no vote for tensor {name!r} (target {loaded.metadata['target']}"
                                 + (f"; closest: {close}" if close else "") + "): the votes were computed for "
                                 "another model or parameter set than this merge's.")
        if tuple(loaded.votes[key].shape) != tuple(shape):
            raise VotesFileError(f"{path}: tensor {key!r} has votes of shape {list(loaded.votes[key].shape)} but the "
                                 f"merge's {name!r} has shape {list(shape)}: the votes are for another model.")
        signs.append(loaded.votes[key])
        evidence.append(loaded.evidence.get(key))
        n_votes.append(loaded.n_samples)
        kernel_name = key
    return kernel_name, signs, evidence, n_votes


def _new_tensor(method: MergeMethod, name: str, finetuned: Sequence[torch.Tensor], readers: Sequence[_Source],
                votes: Sequence[Optional[str]], params: Mapping[str, Any], names: _Names) -> torch.Tensor:
    """A tensor no θ_A has (a head added by fine-tuning): the first fine-tune's, as ``gradfix run`` copies a
    new head. If the votes have it, θ_A is not the model the votes were computed with: an error."""
    if method.sign_source(params) is not None:
        for path in votes:
            if path:
                with _LOCK:
                    loaded = load_votes(path)
                if _vote_key(loaded, name, readers[0].prefix, names) is not None:
                    raise CompatibilityError(
                        f"tensor {name!r} has votes in {path} but is not in source {readers[0].reference}: the "
                        "source is not the θ_A these votes were computed with.")
    logger.warning("tensor %r is not in source %s: taken unchanged from the first fine-tune, as `gradfix run` "
                   "copies a new head.", name, readers[0].reference)
    return finetuned[0].clone()


@functools.lru_cache(maxsize=None)
def _method_class():
    """The mergekit method class (defined on first use: it subclasses a mergekit class)."""
    mk = _mergekit()

    class GradFixMergekitMethod(mk.GroupMergeMethod):
        """A gradfix_hf registry method as a mergekit method (one output tensor per call)."""

        def __init__(self, method: MergeMethod):
            self.method = method
            self.spec = _spec(method)

        def merge_group(self, group, /, **parameters: Any) -> torch.Tensor:
            fine_tunes = group.non_base
            for entry in group.entries:
                check_finite(entry.tensor, f"{entry.id} tensor {group.metadata.name!r}")
            per_model = {name: parameters.get(name) for name in ("source", "votes", "weight")}
            own = {name: parameters[name] for name in self.method.parameter_names()}
            return merge_tensor(
                self.method, group.metadata.name, group.base.tensor, [e.tensor for e in fine_tunes],
                [per_model["source"][e.id] for e in fine_tunes],
                [per_model["votes"][e.id] if per_model["votes"] is not None else None for e in fine_tunes],
                [per_model["weight"][e.id] if per_model["weight"] is not None else 1.0 for e in fine_tunes],
                own, alpha=parameters["alpha"], force=parameters["force"],
                names=weight_names(group.base.id, group.metadata.name))

    return GradFixMergekitMethod


def register_methods() -> list[str]:
    """Register one mergekit method per gradfix_hf method; returns their mergekit names. Idempotent."""
    mk = _mergekit()
    cls = _method_class()
    with _LOCK:
        present = {m.spec.name: m for m in mk.registered_methods()}
        names = []
        for method in gradfix_registry().values():
            name = mergekit_name(method.name)
            existing = present.get(name)
            if existing is None:
                mk.register(cls(method))
            elif not isinstance(existing, cls):
                raise ValueError(f"mergekit already has a merge method {name!r} that is not gradfix_hf's.")
            names.append(name)
    return names


# --- checking a config before the merge, and the command ----------------------------------------------------

def _raw_config(config: Any) -> dict:
    import yaml

    if isinstance(config, (str, os.PathLike)):
        raw = read_yaml_mapping(Path(config), "mergekit config", "a mergekit config must be a YAML mapping")
    elif isinstance(config, Mapping):
        raw = dict(config)
    else:  # a mergekit MergeConfiguration
        raw = yaml.safe_load(config.to_yaml())
    if not isinstance(raw, Mapping):
        raise RecipeError("mergekit config: expected a YAML mapping.")
    return dict(raw)


def _unknown(key: str, valid: Sequence[str], where: str, method: str) -> RecipeError:
    extra = did_you_mean(key, valid) or f" Valid: {', '.join(valid)}."
    return RecipeError(f"{where}: unknown parameter {key!r} for merge_method {method!r} (mergekit would ignore "
                       f"it).{extra}")


def _scalar(value: Any) -> bool:
    return not isinstance(value, (list, tuple, Mapping))


def check_config(config: Any) -> Optional[str]:
    """Check a mergekit config (path, mapping or ``MergeConfiguration``) that uses a GradFix method, before any
    tensor is read: parameter names (mergekit silently ignores unknown ones) and values, each fine-tune's
    ``source``, its votes file, and what a per-tensor method cannot do. Returns the method's mergekit name, or
    None for other methods (left to mergekit). ``gradfix-mergekit-yaml`` runs it first."""
    raw = _raw_config(config)
    name = raw.get("merge_method")
    methods = {mergekit_name(m.name): m for m in gradfix_registry().values()}
    if name not in methods:
        return None
    method = methods[name]
    for key in ("slices", "modules"):
        if raw.get(key):
            raise RecipeError(f"{key}: merge_method {name!r} takes a `models:` list only: it reads θ_A and the votes "
                              f"under the output tensor's name, which {key} may take from other input layers.")
    for key in ("tokenizer", "tokenizer_source"):
        if raw.get(key) is not None:
            raise RecipeError(f"{key}: merge_method {name!r} needs θ_A, the fine-tunes and θ_B to share one "
                              "vocabulary (no embedding permutation); remove it (the base model's tokenizer is "
                              "copied).")
    if not raw.get("base_model"):
        raise RecipeError(f"base_model: merge_method {name!r} needs the target θ_B as base_model.")
    models = raw.get("models") or []
    for model in [raw["base_model"]] + [m.get("model") if isinstance(m, Mapping) else m for m in models]:
        if isinstance(model, str) and Path(model).exists() and not Path(model).is_absolute():
            logger.warning("%s is a relative path: mergekit's model card looks relative paths up on the Hub (an "
                           "error offline, after the weights are written); prefer an absolute path.", model)
    method.check_tasks(len(models), "models")
    shared, per_model = shared_parameters(method), per_model_parameters(method)
    top = raw.get("parameters") or {}
    for key in top:
        if key not in shared + per_model:
            raise _unknown(key, shared + per_model, "parameters", name)
    own = {k: v for k, v in top.items() if k in method.parameter_names() and _scalar(v)}
    params = validate_parameters(method, own, "parameters")
    alpha, force = top.get("alpha", 1.0), top.get("force", False)
    if _scalar(alpha) and _scalar(force):
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise RecipeError(f"parameters.alpha: must be a number, got {alpha!r}.")
        _check_alpha(float(alpha), bool(force), "parameters")
    needs_votes = method.sign_source(params) is not None
    seen_votes = set()
    for i, model in enumerate(models):
        where = f"models[{i}] ({model.get('model') if isinstance(model, Mapping) else model})"
        own_params = (model.get("parameters") if isinstance(model, Mapping) else None) or {}
        for key in own_params:
            if key in shared:
                raise RecipeError(f"{where}.parameters.{key}: a global parameter of {name!r}: put it under the "
                                  "top-level `parameters:` (mergekit ignores it per model).")
            if key not in per_model:
                raise _unknown(key, per_model, f"{where}.parameters", name)
        source = own_params.get("source", top.get("source"))
        if not isinstance(source, str) or not source:
            raise RecipeError(f"{where}: no `source` (θ_A, the pre-trained model this fine-tune started from) as a "
                              "path or Hub id, under the model's parameters or the top-level parameters.")
        _check_local_source(source, where)
        if needs_votes:
            votes = own_params.get("votes", top.get("votes"))
            if not isinstance(votes, str) or not votes:
                raise RecipeError(f"{where}: no `votes` file: mask {params['mask']!r} needs the target's votes "
                                  "(gradfix votes RECIPE -o FILE).")
            check_votes(load_votes(votes), votes, _aggregation(params, method))
            seen_votes.add(_same_file(votes))
    if needs_votes and method.shared_vote and len(seen_votes) > 1:
        raise RecipeError(f"models: merge_method {name!r} votes once for every source: give every model the same "
                          f"votes file (got {sorted(seen_votes)}).")
    return name


def _check_local_source(source: str, where: str) -> None:
    if looks_local(source):
        resolve_model(ModelRef(path=source), role=f"{where}.parameters.source")


def _config_argument(command: Any, args: Sequence[str], prog: str) -> Optional[str]:
    """The CONFIG_FILE argument as mergekit-yaml's own parser reads it (None when it cannot tell)."""
    try:
        with command.make_context(prog, list(args), resilient_parsing=True) as ctx:
            return ctx.params.get("config_file")
    except Exception:  # mergekit's parser reports the problem itself  # noqa: BLE001
        return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``gradfix-mergekit-yaml CONFIG OUT [mergekit-yaml options]``: mergekit-yaml with the GradFix methods
    registered and their config checked first. Exits with mergekit-yaml's status, or 2 on a GradFix error."""
    prog = "gradfix-mergekit-yaml"
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        register_methods()
    except ImportError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    from mergekit.scripts import run_yaml

    try:
        config_file = _config_argument(run_yaml.main, args, prog)
        if config_file is not None and Path(config_file).is_file():
            check_config(config_file)
        run_yaml.main.main(args=args, prog_name=prog)  # click: exits with mergekit-yaml's status
    except GradFixError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
