"""Why a Hub call failed, in words that name the repo, the revision and the reason, and never a token.

Every pull and push goes through ``huggingface_hub``; its errors (gated or missing repos, bad revisions, 401/403,
offline mode, a dropped connection) are turned into one sentence here. Any token text a server might echo is
redacted: gradfix_hf never prints, logs or writes a token.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


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


def offline_or_unreachable(exc: BaseException) -> bool:
    """The Hub could not be asked: offline mode, not in the cache, or a network failure."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    return isinstance(exc, LocalEntryNotFoundError) or any(
        isinstance(e, (OfflineModeIsEnabled,) + _transport_error_types()) for e in _chain(exc))
