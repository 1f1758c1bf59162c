"""Push a finished output folder to a Hub model repo in one commit.

A push (:func:`push_folder`) creates the repo if needed and uploads the folder in one commit
(``HfApi.create_commit``; with ``hf_xet`` installed the large files travel over Xet, otherwise plain LFS), so
an interrupted push publishes nothing. The token comes from the standard places and is never printed.
"""
from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Optional, Union

from ..errors import GradFixError
from ..version import __version__
from .failures import hub_failure

#: weight files of an earlier push that a new push removes (in the same commit) when the new folder lacks them
STALE_WEIGHT_PATTERNS = (
    "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model*.bin.index.json")


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