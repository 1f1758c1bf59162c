"""The Hugging Face Hub: resolve models, data sets and votes files by id + revision, and push output folders.

Everything goes through ``huggingface_hub`` (``snapshot_download``, ``hf_hub_download``, ``HfApi``), so
``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, the local cache (``HF_HUB_CACHE``) and the standard token places
(``HF_TOKEN``, then the ``hf auth login`` cache) are honoured. gradfix_hf never prints, logs or writes a token:
error messages are built from the repo, the revision and the reason, and any token text that a server might
echo is redacted.

Pulls download only what GradFix needs: config, tokenizer and generation files, then exactly the weight files
the model uses (``model.safetensors`` or the shards its index lists). Pickle weights (``pytorch_model*.bin``)
are fetched only with ``allow_pickle`` and only when the repo has no safetensors; Python files only with
``trust_remote_code``. Every pull is pinned to the commit its revision resolved to, and that commit hash is
recorded.

A push (:func:`push_folder`) creates the repo if needed and uploads a finished output folder in one commit
(``HfApi.create_commit``; with ``hf_xet`` installed the large files travel over Xet, otherwise plain LFS), so
an interrupted push publishes nothing.
"""
from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from .errors import GradFixError, ModelResolutionError
from .recipe import ModelRef

logger = logging.getLogger("gradfix_hf")

SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
METADATA_PATTERNS = ["*.json", "*.txt", "*.model", "tokenizer*", "*.tiktoken", "merges.txt", "vocab*"]
REMOTE_CODE_PATTERNS = ["*.py"]
#: data files a Hub data set may hold (and their compressed forms), for ``datasets``' packaged builders
DATA_EXTENSIONS = ("csv", "tsv", "json", "jsonl", "parquet", "arrow", "txt")
DATA_COMPRESSIONS = ("", ".gz", ".zst", ".bz2", ".xz")
#: a data set's card and config files (.gitattributes, tiny, so that the first pass always matches a file)
DATASET_METADATA = ["README.md", ".huggingface.yaml", "dataset_infos.json", ".gitattributes"]
#: weight files of an earlier push that a new push removes (in the same commit) when the new folder lacks them
STALE_WEIGHT_PATTERNS = (
    "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model*.bin.index.json")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
HF_URI_PREFIX = "hf://"

#: hf:// references resolved in this process → the commit they resolved to (for reports)
_RESOLVED_REFERENCES: dict[str, str] = {}


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

    @property
    def is_adapter(self) -> bool:
        """A PEFT LoRA adapter (``adapter_config.json``), not a full model: see :mod:`gradfix_hf.lora`."""
        return "adapter" in self.extra

    def describe(self) -> dict:
        out = {"role": self.role, "path": self.ref.path, "repo_id": self.repo_id, "revision": self.ref.revision,
               "commit_hash": self.commit_hash, "subfolder": self.ref.subfolder, "weights": self.weight_format}
        if self.is_adapter:
            from .lora.adapter_files import describe

            out["adapter"] = describe(self)
        return out


# --------------------------------------------------------------------------------------------- errors, tokens
def hub_endpoint() -> str:
    """The Hub the client talks to (``HF_ENDPOINT``, https://huggingface.co by default)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def _known_tokens(extra: Optional[str] = None) -> list[str]:
    tokens = [extra, os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")]
    try:
        from huggingface_hub import constants

        tokens.append(Path(constants.HF_TOKEN_PATH).read_text().strip())
    except (OSError, AttributeError):
        pass
    return [t for t in tokens if isinstance(t, str) and len(t) >= 4]


def redact(text: str, token: Optional[str] = None) -> str:
    """``text`` with any token from the standard places (or ``token``) replaced by ``***``."""
    for secret in _known_tokens(token):
        text = text.replace(secret, "***")
    return text


def _transport_error_types() -> tuple[type, ...]:
    types: list[type] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):
        try:
            types.append(__import__(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(types)


def _chain(exc: BaseException) -> list[BaseException]:
    out, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _server_message(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    message = getattr(exc, "server_message", None)
    if not message and response is not None:
        message = response.headers.get("X-Error-Message")
    return f": {message}" if message else ""


def hub_failure(exc: BaseException, *, kind: str = "model", repo_id: str, revision: Optional[str] = None,
                filename: Optional[str] = None, token: Optional[str] = None) -> str:
    """Why a Hub call failed, in words that name the repo, the revision and the reason (never the token)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        OfflineModeIsEnabled, RemoteEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    endpoint = hub_endpoint()
    at = f" at revision {revision!r}" if revision else ""
    if isinstance(exc, GatedRepoError):
        reason = (f"{kind} repo {repo_id!r} is gated: accept its conditions on the Hub with your account and use "
                  "that account's token")
    elif isinstance(exc, RepositoryNotFoundError):
        reason = (f"{kind} repo {repo_id!r} not found on {endpoint} (or it is private and not visible with your "
                  "token; tokens come from HF_TOKEN or `hf auth login`)")
    elif isinstance(exc, RevisionNotFoundError):
        reason = (f"revision {revision or 'main'!r} not found in {kind} repo {repo_id!r} (a revision is a branch, a "
                  "tag or a commit hash)")
    elif isinstance(exc, RemoteEntryNotFoundError):
        reason = f"file {filename!r} not found in {kind} repo {repo_id!r}{at}"
    elif isinstance(exc, HfHubHTTPError) and exc.response is not None and exc.response.status_code == 401:
        reason = (f"the Hub at {endpoint} rejected the token (401 Unauthorized{_server_message(exc)}); the token "
                  "comes from HF_TOKEN or `hf auth login`: renew it, or unset HF_TOKEN for public repos")
    elif isinstance(exc, HfHubHTTPError) and exc.response is not None and exc.response.status_code == 403:
        reason = (f"your token is not allowed to do this on {kind} repo {repo_id!r} (403 Forbidden"
                  f"{_server_message(exc)}); a push needs a token with write access to the namespace")
    elif isinstance(exc, HfHubHTTPError) and exc.response is not None:
        reason = f"the Hub at {endpoint} answered {exc.response.status_code}{_server_message(exc)}"
    elif any(isinstance(e, OfflineModeIsEnabled) for e in _chain(exc)) or (
            isinstance(exc, LocalEntryNotFoundError) and constants.is_offline_mode()):
        reason = "it is not in the local cache and the Hub cannot be reached (HF_HUB_OFFLINE is set)"
    elif any(isinstance(e, _transport_error_types()) for e in _chain(exc)):
        cause = next(e for e in _chain(exc) if isinstance(e, _transport_error_types()))
        reason = (f"the Hub at {endpoint} cannot be reached or dropped the connection "
                  f"({cause.__class__.__name__}: {cause})")
    else:
        reason = f"{exc.__class__.__name__}: {exc}"
    return redact(reason, token)


def _offline_or_unreachable(exc: BaseException) -> bool:
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    return isinstance(exc, LocalEntryNotFoundError) or any(
        isinstance(e, (OfflineModeIsEnabled,) + _transport_error_types()) for e in _chain(exc))


# --------------------------------------------------------------------------------------------- models
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
                  download_weights: bool = True, trust_remote_code: bool = False) -> ResolvedModel:
    """Resolve ``ref`` to local files; raise :class:`ModelResolutionError` naming ``role`` and the reason."""
    if _looks_local(ref.path):
        folder = Path(ref.path).expanduser()
        if ref.subfolder:
            folder = folder / ref.subfolder
        if not folder.is_dir():
            raise ModelResolutionError(f"{role}: local model folder {folder} does not exist.")
        if ref.revision:
            raise ModelResolutionError(f"{role}: 'revision' is for Hub ids; {ref.path} is a local folder.")
        from .lora.adapter_files import is_adapter_folder, resolve_adapter

        if is_adapter_folder(folder):  # a PEFT LoRA adapter (its base is bound by the caller)
            return resolve_adapter(ref, role, folder, allow_pickle)
        if not (folder / "config.json").is_file():
            raise ModelResolutionError(f"{role}: {folder} has no config.json.")
        files, fmt = _weight_files(folder, role, allow_pickle)
        return ResolvedModel(ref=ref, role=role, local_dir=folder, weight_files=files, weight_format=fmt)
    return _resolve_hub(ref, role=role, allow_pickle=allow_pickle, token=token, download_weights=download_weights,
                        trust_remote_code=trust_remote_code)


def _snapshot(repo_id: str, *, repo_type: str, revision: Optional[str], allow: list[str], ignore: list[str],
              token: Optional[str]) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision, allow_patterns=allow,
                                  ignore_patterns=ignore or None, token=token))


def _resolve_hub(ref: ModelRef, *, role: str, allow_pickle: bool, token: Optional[str], download_weights: bool,
                 trust_remote_code: bool) -> ResolvedModel:
    """Metadata first (pinning the revision to its commit), then exactly the weight files it names."""
    from .lora.adapter_files import adapter_weight_names, is_adapter_folder, resolve_adapter

    prefix = f"{ref.subfolder.strip('/')}/" if ref.subfolder else ""
    metadata = [prefix + p for p in METADATA_PATTERNS + (REMOTE_CODE_PATTERNS if trust_remote_code else [])]
    ignore = [prefix + "*/*"]  # files of deeper subfolders (other variants, checkpoints) are not needed
    try:
        snapshot = _snapshot(ref.path, repo_type="model", revision=ref.revision, allow=metadata, ignore=ignore,
                             token=token)
        commit = snapshot.name if _COMMIT_RE.match(snapshot.name) else None
        folder = snapshot / ref.subfolder if ref.subfolder else snapshot
        adapter = download_weights and is_adapter_folder(folder)
        if adapter:  # a LoRA adapter repo: its adapter weights only
            _snapshot(ref.path, repo_type="model", revision=commit or ref.revision,
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
                        break  # _weight_files reports the corrupt index
                _snapshot(ref.path, repo_type="model", revision=commit or ref.revision,
                          allow=metadata + [prefix + w for w in wanted], ignore=ignore, token=token)
                if all((folder / w).is_file() for w in wanted):
                    break
    except Exception as exc:  # huggingface_hub's errors, network errors, OSError from the cache
        if isinstance(exc, GradFixError):
            raise
        if _offline_or_unreachable(exc):
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
        files, fmt = _weight_files(folder, role, allow_pickle)
    else:
        files, fmt = [], "none"
    return ResolvedModel(ref=ref, role=role, local_dir=folder, weight_files=files, weight_format=fmt,
                         repo_id=ref.path, commit_hash=commit)


# --------------------------------------------------------------------------------------------- files (votes)
def is_hub_reference(reference: Any) -> bool:
    """True for an ``hf://[TYPE/]ORG/NAME[@REVISION]/PATH`` reference to one file in a Hub repo."""
    return isinstance(reference, str) and reference.startswith(HF_URI_PREFIX)


def resolve_hub_file(reference: str, *, where: str = "votes", token: Optional[str] = None,
                     error: type = GradFixError) -> tuple[Path, Optional[str]]:
    """Download the file an ``hf://`` reference names (cached, pinned to a commit); return (path, commit)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfUriError
    from huggingface_hub.utils import parse_hf_uri

    try:
        uri = parse_hf_uri(reference)
    except HfUriError as exc:
        raise error(f"{where}: cannot read {reference!r} as a Hub file reference "
                    f"(hf://[datasets/]ORG/NAME[@REVISION]/PATH): {exc}") from None
    if uri.type not in ("model", "dataset") or not uri.path_in_repo:
        raise error(f"{where}: {reference!r} must name one file in a model or dataset repo, "
                    "e.g. hf://org/name@v1/votes.safetensors or hf://datasets/org/name/votes.safetensors.")
    try:
        path = Path(hf_hub_download(uri.id, uri.path_in_repo, repo_type=uri.type, revision=uri.revision, token=token))
    except Exception as exc:
        reason = hub_failure(exc, kind=uri.type, repo_id=uri.id, revision=uri.revision, filename=uri.path_in_repo,
                             token=token)
        raise error(f"{where}: cannot fetch {reference}: {reason}.") from None
    parts = path.parts
    commit = next((parts[i + 1] for i, p in enumerate(parts[:-1]) if p == "snapshots"
                   and _COMMIT_RE.match(parts[i + 1])), None)
    if commit:
        _RESOLVED_REFERENCES[reference] = commit
    return path, commit


def local_path(reference: Union[str, os.PathLike], *, where: str = "votes", token: Optional[str] = None,
               error: type = GradFixError) -> Path:
    """A local file for ``reference``: itself, or the cached download of an ``hf://`` reference."""
    if is_hub_reference(reference):
        return resolve_hub_file(str(reference), where=where, token=token, error=error)[0]
    return Path(reference)


def pinned_reference(reference: Optional[str]) -> Optional[str]:
    """An ``hf://`` reference with its revision replaced by the commit it resolved to in this process."""
    if not is_hub_reference(reference) or reference not in _RESOLVED_REFERENCES:
        return reference
    from huggingface_hub.utils import parse_hf_uri

    uri = parse_hf_uri(reference)
    kind = "" if uri.type == "model" else f"{uri.type}s/"
    return f"{HF_URI_PREFIX}{kind}{uri.id}@{_RESOLVED_REFERENCES[reference]}/{uri.path_in_repo}"


# --------------------------------------------------------------------------------------------- data sets
def _dataset_patterns(folder: Path, name: Optional[str]) -> list[str]:
    """The data files of config ``name`` per the card's ``configs`` metadata, else every data file."""
    every = [f"*.{ext}{comp}" for ext in DATA_EXTENSIONS for comp in DATA_COMPRESSIONS]
    readme = folder / "README.md"
    if not readme.is_file():
        return every
    try:
        from huggingface_hub import DatasetCard

        configs = DatasetCard.load(readme).data.to_dict().get("configs") or []
    except Exception:  # a card we cannot read: fall back to every data file
        return every
    chosen = [c for c in configs if isinstance(c, dict) and c.get("config_name", "default") == (name or "default")]
    if not chosen and name is None:
        chosen = [c for c in configs if isinstance(c, dict) and c.get("default")] or (
            configs if len(configs) == 1 else [])
    patterns: list[str] = []
    for config in chosen:
        data_files = config.get("data_files")
        items = data_files if isinstance(data_files, list) else [data_files]
        for item in items:
            paths = item.get("path") if isinstance(item, dict) else item
            patterns += [p for p in (paths if isinstance(paths, list) else [paths]) if isinstance(p, str)]
        if config.get("data_dir"):
            patterns.append(config["data_dir"].rstrip("/") + "/*")
    return patterns or every


def snapshot_dataset(repo_id: str, *, name: Optional[str] = None, revision: Optional[str] = None,
                     token: Optional[str] = None, where: str = "data", error: type = GradFixError) -> tuple[Path, str]:
    """The files of a Hub data set (card, then the data files of config ``name``) in the local cache, pinned to
    one commit; return (folder, commit). ``datasets.load_dataset(folder, name)`` reads them like the Hub would."""
    try:
        folder = _snapshot(repo_id, repo_type="dataset", revision=revision, allow=DATASET_METADATA, ignore=[],
                           token=token)
        commit = folder.name if _COMMIT_RE.match(folder.name) else None
        patterns = _dataset_patterns(folder, name)
        folder = _snapshot(repo_id, repo_type="dataset", revision=commit or revision,
                           allow=DATASET_METADATA + patterns, ignore=[], token=token)
    except Exception as exc:
        reason = hub_failure(exc, kind="dataset", repo_id=repo_id, revision=revision, token=token)
        raise error(f"{where}: cannot fetch data set {repo_id!r}"
                    f"{f' at revision {revision!r}' if revision else ''} from the Hub: {reason}.") from None
    logger.info("%s: data set %s@%s resolved to commit %s", where, repo_id, revision or "main", commit)
    return folder, commit


# --------------------------------------------------------------------------------------------- push
def _require_token(where: str, token: Optional[str]) -> None:
    from huggingface_hub import constants, get_token

    if constants.is_offline_mode():
        raise GradFixError(f"{where}: HF_HUB_OFFLINE is set; a push needs the Hub (unset HF_HUB_OFFLINE).")
    if token is None and get_token() is None:
        raise GradFixError(f"{where}: no Hugging Face token found; set HF_TOKEN or run `hf auth login` (a token "
                           "with write access).")


def check_push_token(repo_id: str, token: Optional[str] = None) -> str:
    """Before long work: a token is configured and the Hub accepts it; return the user name."""
    from huggingface_hub import HfApi

    _require_token(f"push to Hub repo {repo_id!r}", token)
    try:
        return HfApi(token=token).whoami(token=token)["name"]
    except Exception as exc:
        raise GradFixError(f"push to Hub repo {repo_id!r}: "
                           f"{hub_failure(exc, repo_id=repo_id, token=token)}.") from None


def _is_stale_weight(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(name, pattern) for pattern in STALE_WEIGHT_PATTERNS)


def folder_files(folder: Path) -> list[Path]:
    """The files a push uploads: everything in the folder except hidden files and folders."""
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def push_folder(folder: Union[str, os.PathLike], repo_id: str, *, commit_message: str,
                commit_description: Optional[str] = None, private: Optional[bool] = None,
                token: Optional[str] = None, revision: Optional[str] = None):
    """Create ``repo_id`` if needed and upload ``folder`` to branch ``revision`` (default main) in one commit.

    Weight files of an earlier push that ``folder`` lacks (old shards) are deleted in the same commit; other
    files in the repo are left alone. The commit names its parent, so a concurrent change to the branch makes
    the push fail instead of mixing. Returns huggingface_hub's ``CommitInfo`` (``.oid``, ``.commit_url``).
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    from .version import __version__

    folder = Path(folder)
    where = f"push of {folder} to Hub repo {repo_id!r}" + (f" (branch {revision!r})" if revision else "")
    files = folder_files(folder)
    if not files:
        raise GradFixError(f"{where}: the folder has no files to upload.")
    _require_token(where, token)
    api = HfApi(token=token, library_name="gradfix_hf", library_version=__version__)
    head = None
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.model_info(repo_id, revision=revision)
        head = info.sha
        local = {p.relative_to(folder).as_posix() for p in files}
        stale = sorted(s.rfilename for s in info.siblings or [] if s.rfilename not in local
                       and _is_stale_weight(s.rfilename))
        operations = [CommitOperationDelete(path_in_repo=p) for p in stale] + [
            CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p)) for p in files]
        return api.create_commit(repo_id, operations=operations, commit_message=commit_message,
                                 commit_description=commit_description, revision=revision, parent_commit=head)
    except Exception as exc:
        reason = hub_failure(exc, repo_id=repo_id, revision=revision, token=token)
        raise GradFixError(f"{where} failed: {reason}. {_published_state(api, repo_id, revision, head)}") from None


def _published_state(api, repo_id: str, revision: Optional[str], head: Optional[str]) -> str:
    """What a failed push left on the Hub, checked rather than assumed."""
    if head is None:
        return "No commit was made."
    try:
        now = api.model_info(repo_id, revision=revision).sha
    except Exception:
        return f"Could not check the branch afterwards; it was at {head} before the push."
    if now == head:
        return f"No commit was made: the branch is still at {head}."
    return f"The branch moved from {head} to {now} meanwhile: check the repo before pushing again."
