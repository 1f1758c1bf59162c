"""Resolve a model reference (local folder or Hub id + revision + subfolder) to local files.

Hub repos go through ``huggingface_hub.snapshot_download`` with only the files GradFix needs (config,
tokenizer, generation config, safetensors), so HF_HUB_OFFLINE, the local cache and the standard token
places are honoured. The resolved commit hash is kept for the report. Pickle weights are refused unless
explicitly allowed.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import ModelResolutionError
from .recipe import ModelRef

SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
METADATA_PATTERNS = ["*.json", "*.txt", "*.model", "tokenizer*", "*.tiktoken", "merges.txt", "vocab*"]
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class ResolvedModel:
    """Local files of one model, plus where they came from."""

    ref: ModelRef
    role: str
    local_dir: Path
    weight_files: list[Path]
    weight_format: str  # "safetensors" or "pickle"
    repo_id: Optional[str] = None
    commit_hash: Optional[str] = None
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.repo_id or str(self.local_dir)

    def describe(self) -> dict:
        return {"role": self.role, "path": self.ref.path, "repo_id": self.repo_id, "revision": self.ref.revision,
                "commit_hash": self.commit_hash, "subfolder": self.ref.subfolder, "weights": self.weight_format}


def _looks_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or "\\" in path or path.count("/") > 1 or Path(path).expanduser().exists()


def _weight_files(folder: Path, role: str, allow_pickle: bool) -> tuple[list[Path], str]:
    """The weight files of a model folder: safetensors (single or sharded), else pickle when allowed."""
    for single, index in (SAFETENSORS_FILES, PICKLE_FILES):
        if (folder / index).is_file():
            try:
                weight_map = json.loads((folder / index).read_text())["weight_map"]
            except (ValueError, KeyError) as exc:
                raise ModelResolutionError(f"{role}: corrupt shard index {folder / index}: {exc}") from None
            files = [folder / name for name in sorted(set(weight_map.values()))]
        elif (folder / single).is_file():
            files = [folder / single]
        else:
            continue
        fmt = "safetensors" if single.endswith(".safetensors") else "pickle"
        # refuse pickle first: a Hub download without allow_pickle fetches a pickle index but not its shards
        if fmt == "pickle" and not allow_pickle:
            shown = index if (folder / index).is_file() else single
            raise ModelResolutionError(
                f"{role}: {folder} only has pickle weights ({shown}); pickle can run code when loaded. "
                "Convert them to safetensors, or allow them with `allow_pickle: true` / `--allow-pickle` "
                "(they are then loaded with torch.load(weights_only=True))."
            )
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ModelResolutionError(f"{role}: weight shard(s) listed in the index are missing: {missing}")
        return files, fmt
    found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    hint = "" if allow_pickle else " Pickle weights (pytorch_model*.bin) are only used with `allow_pickle: true`."
    raise ModelResolutionError(
        f"{role}: no model weights in {folder} (expected model.safetensors or model.safetensors.index.json; "
        f"found {found or 'nothing'}).{hint}"
    )


def resolve_model(ref: ModelRef, *, role: str, allow_pickle: bool = False, token: Optional[str] = None,
                  download_weights: bool = True) -> ResolvedModel:
    """Resolve ``ref`` to local files; raise :class:`ModelResolutionError` naming ``role`` and the reason."""
    if _looks_local(ref.path):
        folder = Path(ref.path).expanduser()
        if ref.subfolder:
            folder = folder / ref.subfolder
        if not folder.is_dir():
            raise ModelResolutionError(f"{role}: local model folder {folder} does not exist.")
        if ref.revision:
            raise ModelResolutionError(f"{role}: 'revision' is for Hub ids; {ref.path} is a local folder.")
        if not (folder / "config.json").is_file():
            raise ModelResolutionError(f"{role}: {folder} has no config.json.")
        files, fmt = _weight_files(folder, role, allow_pickle)
        return ResolvedModel(ref=ref, role=role, local_dir=folder, weight_files=files, weight_format=fmt)
    return _resolve_hub(ref, role=role, allow_pickle=allow_pickle, token=token, download_weights=download_weights)


def _resolve_hub(ref: ModelRef, *, role: str, allow_pickle: bool, token: Optional[str],
                 download_weights: bool) -> ResolvedModel:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    prefix = f"{ref.subfolder}/" if ref.subfolder else ""
    patterns = [prefix + p for p in METADATA_PATTERNS]
    if download_weights:
        patterns += [prefix + "*.safetensors"] + ([prefix + "pytorch_model*.bin"] if allow_pickle else [])
    try:
        snapshot = Path(snapshot_download(ref.path, revision=ref.revision, allow_patterns=patterns, token=token))
    except RepositoryNotFoundError:
        raise ModelResolutionError(f"{role}: Hub repo {ref.path!r} not found (or not visible with your token).") from None
    except RevisionNotFoundError:
        raise ModelResolutionError(f"{role}: revision {ref.revision!r} not found in Hub repo {ref.path!r}.") from None
    except LocalEntryNotFoundError as exc:
        raise ModelResolutionError(
            f"{role}: {ref} is not in the local cache and the Hub cannot be reached ({exc.__class__.__name__}), "
            f"and there is no local folder {ref.path!r} either. Use an existing local folder, or download it first."
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelResolutionError(f"{role}: cannot fetch {ref} from the Hub: {exc}") from None
    commit = snapshot.name if _COMMIT_RE.match(snapshot.name) else None
    folder = snapshot / ref.subfolder if ref.subfolder else snapshot
    if not (folder / "config.json").is_file():
        raise ModelResolutionError(f"{role}: Hub repo {ref} has no config.json.")
    if download_weights:
        files, fmt = _weight_files(folder, role, allow_pickle)
    else:
        files, fmt = [], "none"
    return ResolvedModel(ref=ref, role=role, local_dir=folder, weight_files=files, weight_format=fmt,
                         repo_id=ref.path, commit_hash=commit)
