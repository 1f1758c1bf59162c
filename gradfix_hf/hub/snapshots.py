"""Pinned snapshot downloads: a revision is resolved to its commit once, and every file of a pull comes from it."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


def snapshot(repo_id: str, *, repo_type: str, revision: Optional[str], allow: list[str], ignore: list[str],
             token: Optional[str]) -> Path:
    """``huggingface_hub.snapshot_download`` of the files matching ``allow`` (through the cache, offline mode
    and the standard token places); the folder is named after the commit the revision resolved to."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision, allow_patterns=allow,
                                  ignore_patterns=ignore or None, token=token))


def snapshot_commit(folder: Path) -> Optional[str]:
    """The commit hash a snapshot folder is named after (None for a folder that is not a cache snapshot)."""
    return folder.name if COMMIT_RE.match(folder.name) else None
