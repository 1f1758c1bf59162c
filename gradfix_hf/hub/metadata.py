"""What a model is, before any of its weights is downloaded: its small files, its card's ``base_model``, and the
files (and bytes) a run would pull.

Why its own module: ``gradfix rebase`` infers the old base from a fine-tune's adapter config or model card and
prints what it will download under ``--dry-run`` — all from config-sized files and the Hub's file listing, so a
wrong guess costs nothing. The pulls themselves stay in :mod:`.models`.
"""
from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any, Optional

from ..errors import ModelResolutionError
from ..recipe import ModelRef
from .adapters import ADAPTER_CONFIG, adapter_weight_names
from .failures import hub_failure, offline_or_unreachable
from .models import METADATA_PATTERNS, PICKLE_FILES, SAFETENSORS_FILES, local_folder, looks_local
from .snapshots import snapshot, snapshot_commit

CARD = "README.md"


def model_metadata(ref: ModelRef, *, role: str, token: Optional[str] = None) -> tuple[Path, Optional[str]]:
    """The folder holding the model's config, adapter config, tokenizer files and card (no weights): the local
    folder itself, or a pull of those files pinned to the commit ``ref.revision`` resolves to; and that commit."""
    if looks_local(ref.path):
        return local_folder(ref, role), None
    prefix = f"{ref.subfolder.strip('/')}/" if ref.subfolder else ""
    try:
        pulled = snapshot(ref.path, repo_type="model", revision=ref.revision,
                          allow=[prefix + p for p in [*METADATA_PATTERNS, CARD]], ignore=[prefix + "*/*"], token=token)
    except Exception as exc:  # huggingface_hub's errors, network errors
        where = "is not in the local cache and the Hub cannot be reached" if offline_or_unreachable(exc) else \
            "cannot be fetched from the Hub"
        reason = hub_failure(exc, repo_id=ref.path, revision=ref.revision, token=token)
        raise ModelResolutionError(f"{role}: {ref} {where} ({reason}).") from None
    return (pulled / ref.subfolder if ref.subfolder else pulled), snapshot_commit(pulled)


def card_base_models(folder: Path) -> list[str]:
    """The ``base_model`` entries of the model card's metadata in ``folder`` (none without a card or the key)."""
    from huggingface_hub.repocard import metadata_load

    card = Path(folder) / CARD
    if not card.is_file():
        return []
    try:
        metadata = metadata_load(card) or {}
    except (ValueError, OSError, UnicodeDecodeError):  # a card whose front matter is not YAML: no base to read
        return []
    base = metadata.get("base_model")
    items = base if isinstance(base, list) else [base]
    return [b.strip() for b in items if isinstance(b, str) and b.strip()]


def adapter_base(folder: Path) -> Optional[str]:
    """``base_model_name_or_path`` of a PEFT adapter's config in ``folder`` (None for a full model)."""
    path = Path(folder) / ADAPTER_CONFIG
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get("base_model_name_or_path")
    except (ValueError, OSError, AttributeError):
        return None
    return value.strip() if isinstance(value, str) and value.strip() else None


def _wanted(files: dict[str, int], folder: Optional[Path], allow_pickle: bool) -> list[str]:
    """Which of a repo's ``files`` (path → size, relative to the model's folder) a run pulls."""
    names = set(files)
    wanted = [f for f in names if "/" not in f and any(fnmatch.fnmatch(f, p) for p in METADATA_PATTERNS)]
    if ADAPTER_CONFIG in names:
        return wanted + [w for w in adapter_weight_names(allow_pickle) if w in names][:1]
    for single, index in (SAFETENSORS_FILES, PICKLE_FILES) if allow_pickle else (SAFETENSORS_FILES,):
        if index in names and folder is not None and (folder / index).is_file():
            try:
                return wanted + sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError):
                return wanted
        if single in names:
            return wanted + [single]
    return wanted


def planned_download(ref: ModelRef, *, token: Optional[str] = None, allow_pickle: bool = False,
                     metadata_folder: Optional[Path] = None) -> dict[str, Any]:
    """What resolving ``ref`` would pull: ``{"where": "local"|"hub", "files", "bytes"}`` (a local folder pulls
    nothing: its files are counted as they are on disk), from the Hub's file listing, not the files.
    ``metadata_folder``: the folder :func:`model_metadata` gave (a local model's own folder)."""
    if looks_local(ref.path):
        folder = metadata_folder if metadata_folder is not None else local_folder(ref, "model")
        files = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}
        chosen = _wanted(files, folder, allow_pickle)
        return {"where": "local", "files": len(chosen), "bytes": sum(files[f] for f in chosen)}
    from huggingface_hub import HfApi

    prefix = f"{ref.subfolder.strip('/')}/" if ref.subfolder else ""
    try:
        tree = HfApi().list_repo_tree(ref.path, revision=ref.revision, recursive=True, token=token)
        files = {f.path[len(prefix):]: int(f.size or 0) for f in tree
                 if getattr(f, "size", None) is not None and f.path.startswith(prefix)}
    except Exception as exc:
        reason = hub_failure(exc, repo_id=ref.path, revision=ref.revision, token=token)
        return {"where": "hub", "files": None, "bytes": None, "unknown": reason}
    chosen = _wanted(files, metadata_folder, allow_pickle)
    return {"where": "hub", "files": len(chosen), "bytes": sum(files[f] for f in chosen)}
