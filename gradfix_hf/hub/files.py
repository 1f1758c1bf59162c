"""``hf://`` references to single files in Hub repos (votes files): download, pin to a commit, report pinned."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import GradFixError
from .failures import hub_failure
from .snapshots import COMMIT_RE

HF_URI_PREFIX = "hf://"

#: hf:// references resolved in this process → the commit they resolved to (for reports)
_RESOLVED_REFERENCES: dict[str, str] = {}


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
                   and COMMIT_RE.match(parts[i + 1])), None)
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
