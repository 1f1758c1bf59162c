"""Resolve a model reference (a local folder or a Hub id + revision) to the files GradFix needs.

Pulls download only what GradFix needs: config, tokenizer and generation files, then exactly the weight files
the model uses (``model.safetensors`` or the shards its index lists). Pickle weights (``pytorch_model*.bin``)
are fetched only with ``allow_pickle`` and only when the repo has no safetensors; Python files only with
``trust_remote_code``. Every pull is pinned to the commit its revision resolved to, and that commit hash is
recorded. A PEFT LoRA adapter folder resolves to its adapter files (:mod:`.adapters`).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from ..errors import GradFixError, ModelResolutionError
from ..recipe import ModelRef
from .adapters import adapter_weight_names, is_adapter_folder, resolve_adapter
from .failures import hub_failure, offline_or_unreachable
from .resolved import ResolvedModel
from .snapshots import snapshot, snapshot_commit

logger = logging.getLogger("gradfix_hf")

SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
METADATA_PATTERNS = ["*.json", "*.txt", "*.model", "tokenizer*", "*.tiktoken", "merges.txt", "vocab*"]
REMOTE_CODE_PATTERNS = ["*.py"]


def looks_local(path: str) -> bool:
    """Whether a model reference names a local folder rather than a Hub id (``org/name``)."""
    return (path.startswith((".", "/", "~")) or "\\" in path or path.count("/") > 1
            or Path(path).expanduser().exists())


def local_folder(ref: ModelRef, role: str) -> Path:
    """The folder a local model reference names (its subfolder included), or an error naming ``role``."""
    folder = Path(ref.path).expanduser() / (ref.subfolder or "")
    if not folder.is_dir():
        raise ModelResolutionError(f"{role}: local model folder {folder} does not exist.")
    return folder


def find_weight_files(folder: Path, role: str, allow_pickle: bool) -> tuple[list[Path], str]:
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
                  download_weights: bool = True, trust_remote_code: bool = False) -> ResolvedModel:
    """Resolve ``ref`` to local files; raise :class:`ModelResolutionError` naming ``role`` and the reason."""
    if looks_local(ref.path):
        folder = local_folder(ref, role)
        if ref.revision:
            raise ModelResolutionError(f"{role}: 'revision' is for Hub ids; {ref.path} is a local folder.")
        if is_adapter_folder(folder):  # a PEFT LoRA adapter (its base is bound by the caller)
            return resolve_adapter(ref, role, folder, allow_pickle)
        if not (folder / "config.json").is_file():
            raise ModelResolutionError(f"{role}: {folder} has no config.json.")
        files, fmt = find_weight_files(folder, role, allow_pickle)
        return ResolvedModel(ref=ref, role=role, local_dir=folder, weight_files=files, weight_format=fmt)
    return _resolve_hub(ref, role=role, allow_pickle=allow_pickle, token=token, download_weights=download_weights,
                        trust_remote_code=trust_remote_code)


def _resolve_hub(ref: ModelRef, *, role: str, allow_pickle: bool, token: Optional[str], download_weights: bool,
                 trust_remote_code: bool) -> ResolvedModel:
    """Metadata first (pinning the revision to its commit), then exactly the weight files it names."""
    prefix = f"{ref.subfolder.strip('/')}/" if ref.subfolder else ""
    metadata = [prefix + p for p in METADATA_PATTERNS + (REMOTE_CODE_PATTERNS if trust_remote_code else [])]
    ignore = [prefix + "*/*"]  # files of deeper subfolders (other variants, checkpoints) are not needed
    try:
        pulled = snapshot(ref.path, repo_type="model", revision=ref.revision, allow=metadata, ignore=ignore,
                          token=token)
        commit = snapshot_commit(pulled)
        folder = pulled / ref.subfolder if ref.subfolder else pulled
        adapter = download_weights and is_adapter_folder(folder)
        if adapter:  # a LoRA adapter repo: its adapter weights only
            snapshot(ref.path, repo_type="model", revision=commit or ref.revision,
                     allow=metadata + [prefix + w for w in adapter_weight_names(allow_pickle)], ignore=ignore,
                     token=token)
            adapter = any((folder / w).is_file() for w in adapter_weight_names(allow_pickle))
        if not adapter and download_weights and (folder / "config.json").is_file():
            # safetensors first; pickle only when allowed and the repo has no safetensors weights
            for single, index in (SAFETENSORS_FILES, PICKLE_FILES) if allow_pickle else (SAFETENSORS_FILES,):
                wanted = [single]
                if (folder / index).is_file():  # the index came with the metadata (*.json)
                    try:
                        wanted = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
                    except (ValueError, KeyError, TypeError, AttributeError):
                        break  # find_weight_files reports the corrupt index
                snapshot(ref.path, repo_type="model", revision=commit or ref.revision,
                         allow=metadata + [prefix + w for w in wanted], ignore=ignore, token=token)
                if all((folder / w).is_file() for w in wanted):
                    break
    except Exception as exc:  # huggingface_hub's errors, network errors, OSError from the cache
        if isinstance(exc, GradFixError):
            raise
        if offline_or_unreachable(exc):
            why = hub_failure(exc, repo_id=ref.path, revision=ref.revision, token=token)
            raise ModelResolutionError(
                f"{role}: {ref} is not in the local cache and the Hub cannot be reached ({why}), and there is no "
                f"local folder {ref.path!r} either. Use an existing local folder, or download it first."
            ) from None
        reason = hub_failure(exc, repo_id=ref.path, revision=ref.revision, token=token)
        raise ModelResolutionError(f"{role}: cannot fetch {ref} from the Hub: {reason}.") from None
    if download_weights and is_adapter_folder(folder):
        logger.info("%s: %s (a LoRA adapter) resolved to commit %s", role, ref, commit)
        return resolve_adapter(ref, role, folder, allow_pickle, repo_id=ref.path, commit_hash=commit)
    if not (folder / "config.json").is_file():
        raise ModelResolutionError(f"{role}: Hub repo {ref} has no config.json.")
    logger.info("%s: %s resolved to commit %s", role, ref, commit)
    if download_weights:
        files, fmt = find_weight_files(folder, role, allow_pickle)
    else:
        files, fmt = [], "none"
    return ResolvedModel(ref=ref, role=role, local_dir=folder, weight_files=files, weight_format=fmt,
                         repo_id=ref.path, commit_hash=commit)

