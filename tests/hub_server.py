"""A small Hugging Face Hub-compatible HTTP server for tests: real HTTP on 127.0.0.1, a random port, a folder.

It implements exactly the endpoints that ``huggingface_hub`` (2.4) calls for what gradfix_hf does with the Hub,
read from the client's own source, so the real client runs unmodified against it:

pulls (``snapshot_download``, ``hf_hub_download``, ``model_info``/``dataset_info``, ``list_repo_tree``,
``list_repo_refs``, ``list_repo_commits``):
  GET  /api/{models,datasets}/{id}[/revision/{rev}]              repo info (``sha`` = the resolved commit)
  GET  /api/{models,datasets}/{id}/tree/{rev}[/{path}]           file listing (``recursive``)
  GET  /api/{models,datasets}/{id}/refs                          branches and tags
  GET  /api/{models,datasets}/{id}/commits/{rev}                 history, newest first
  HEAD|GET /{id}/resolve/{rev}/{path}, /datasets/{id}/resolve/…  file metadata (X-Repo-Commit, ETag,
                                                                 X-Linked-Etag/-Size for LFS) and content (Range)
pushes (``create_repo``, ``create_branch``, ``create_commit`` with the plain LFS path, i.e. HF_HUB_DISABLE_XET):
  GET  /api/whoami-v2
  POST /api/repos/create                                         new repo with an initial .gitattributes commit
  POST /api/validate-yaml                                        README.md front matter must be a YAML mapping
  POST /api/{models,datasets}/{id}/branch/{branch}
  POST /api/{models,datasets}/{id}/preupload/{rev}               upload mode per file: lfs (per .gitattributes
                                                                 or > 10 MB) or regular, and the remote oid
  POST /{id}.git/info/lfs/objects/batch                          LFS batch: a signed upload URL per missing object
  PUT  /lfs-objects/{sha256}?sig=…                               the upload (like a presigned S3 URL: no token)
  POST /lfs-objects/{sha256}/verify
  POST /api/{models,datasets}/{id}/commit/{rev}                  ndjson commit: applied whole or not at all

Storage, per repo under ``root/repos/<type>s/<org>/<name>/``: ``repo.json`` (visibility, owner), ``refs.json``
(branches, tags), ``commits/<oid>.json`` (each commit is a full snapshot: path → sha256, size, git oid, lfs) and
``objects/<sha256>`` (file contents; an LFS upload is streamed to a temporary file, hashed, and renamed into place
only when its sha256 and size match). A commit is written to its file first and the branch moved last, under a
lock, so a request that fails or is cut off never leaves a half-published commit.

Tokens: ``Authorization: Bearer <token>``; unknown tokens get 401 "Invalid credentials in Authorization header"
on every endpoint, as on the Hub; writes need a token with write access to the namespace (user or org).
Private repos are invisible (404 RepoNotFound) to others. ``inject(...)`` makes a request fail on purpose
(dropped connection, hang until released, or an HTTP status) to test interruptions. ``requests`` logs every
request (method, path, status) so tests can check what was downloaded and that nothing else was called.
"""
from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fnmatch
import hashlib
import json
import os
import re
import secrets
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional, Union
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
LFS_THRESHOLD = 10 * 1024 * 1024
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.npz",
                    "*.parquet", "*.arrow", "*.zip", "*.gz", "*.zst", "*.tar", "*.model", "*tfevents*"))
LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {size}\n"


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubError(Exception):
    """An HTTP error with the Hub's X-Error-Code / X-Error-Message headers."""

    def __init__(self, status: int, message: str, code: Optional[str] = None, headers: Optional[dict] = None,
                 body: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.body = body or {}


@dataclass
class Fault:
    """Make the next ``times`` requests matching ``method`` and ``path_contains`` fail with ``action``:
    ``drop`` (close the connection without an answer, after reading ``read_bytes`` of the body, all of it by
    default), ``hang`` (read ``read_bytes``, set ``started``, wait for ``release`` then drop) or ``status``.
    For an LFS upload (PUT /lfs-objects/), ``hang`` happens inside the upload, after ``read_bytes`` were written
    to its temporary file."""

    method: str
    path_contains: str
    action: str = "drop"
    times: int = 1
    status: int = 500
    read_bytes: Optional[int] = None
    started: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    hits: int = 0
    paths: list = field(default_factory=list)


class LocalHub:
    """The server; use as a context manager or call :meth:`start` / :meth:`stop`."""

    def __init__(self, root: Union[str, Path], tokens: Optional[dict[str, tuple[str, str]]] = None,
                 orgs: Optional[dict[str, set[str]]] = None):
        self.root = Path(root)
        (self.root / "repos").mkdir(parents=True, exist_ok=True)
        self.tokens = dict(tokens or {})  # token -> (user, "read" | "write")
        self.orgs = {k: set(v) for k, v in (orgs or {}).items()}
        self.lock = threading.RLock()
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str, int]] = []
        self.auth_headers_seen: list[str] = []
        self.aborted_uploads: list[str] = []  # LFS uploads cut off before their last byte (then discarded)
        self._signatures: dict[str, str] = {}
        self._counter = 0
        self._httpd: Optional[ThreadingHTTPServer] = None

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> "LocalHub":
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            for fault in self.faults:
                fault.release.set()
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # ---------------------------------------------------------------- test helpers
    def inject(self, method: str, path_contains: str, action: str = "drop", **kwargs) -> Fault:
        fault = Fault(method.upper(), path_contains, action, **kwargs)
        with self.lock:
            self.faults.append(fault)
        return fault

    def seed(self, repo_id: str, files: Union[Path, dict[str, Union[bytes, Path]]], *, repo_type: str = "model",
             branch: str = "main", tags: tuple[str, ...] = (), private: bool = False, owner: Optional[str] = None,
             message: str = "seed") -> str:
        """Commit ``files`` (a folder, or {path in repo: bytes or file}) on ``branch`` without HTTP; return the oid."""
        if isinstance(files, Path):
            files = {p.relative_to(files).as_posix(): p for p in sorted(files.rglob("*")) if p.is_file()}
        with self.lock:
            if not self._repo_dir(repo_type, repo_id).is_dir():
                self._create_repo(repo_type, repo_id, private=private, owner=owner or repo_id.split("/")[0])
            refs = self._refs(repo_type, repo_id)
            parent = refs["branches"].get(branch) or refs["branches"].get("main")
            tree = dict(self._commit(repo_type, repo_id, parent)["files"]) if parent else {}
            for path, content in files.items():
                data = content.read_bytes() if isinstance(content, Path) else content
                tree[path] = self._store(repo_type, repo_id, data, lfs=self._is_lfs(repo_type, repo_id, tree, path,
                                                                                     len(data)))
            oid = self._write_commit(repo_type, repo_id, parent, tree, message, "")
            refs["branches"][branch] = oid
            for tag in tags:
                refs["tags"][tag] = oid
            self._write_refs(repo_type, repo_id, refs)
        return oid

    def tag(self, repo_id: str, tag: str, revision: str = "main", repo_type: str = "model") -> str:
        with self.lock:
            oid = self._resolve(repo_type, repo_id, revision)
            refs = self._refs(repo_type, repo_id)
            refs["tags"][tag] = oid
            self._write_refs(repo_type, repo_id, refs)
        return oid

    def refs(self, repo_id: str, repo_type: str = "model") -> dict:
        with self.lock:
            return self._refs(repo_type, repo_id) if self._repo_dir(repo_type, repo_id).is_dir() else {}

    def commits(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> list[dict]:
        """The history of ``revision``, newest first."""
        with self.lock:
            out, oid = [], self._resolve(repo_type, repo_id, revision)
            while oid:
                commit = self._commit(repo_type, repo_id, oid)
                out.append(commit)
                oid = commit["parent"]
            return out

    def file(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        with self.lock:
            entry = self._commit(repo_type, repo_id, self._resolve(repo_type, repo_id, revision))["files"][path]
        return self._object(repo_type, repo_id, entry["sha256"]).read_bytes()

    def objects(self, repo_id: str, repo_type: str = "model") -> list[str]:
        """Names in the repo's object store (sha256s, and any temporary upload file)."""
        folder = self._repo_dir(repo_type, repo_id) / "objects"
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def downloads(self) -> list[str]:
        """Paths of files whose content was sent (GET on /resolve/), in order."""
        out = []
        for method, path, status in self.requests:
            if method == "GET" and "/resolve/" in path and status in (200, 206):
                out.append(unquote(urlsplit(path).path.split("/resolve/", 1)[1].split("/", 1)[1]))
        return out

    # ---------------------------------------------------------------- storage
    def _repo_dir(self, repo_type: str, repo_id: str) -> Path:
        return self.root / "repos" / f"{repo_type}s" / repo_id

    def _create_repo(self, repo_type: str, repo_id: str, private: bool, owner: str) -> None:
        folder = self._repo_dir(repo_type, repo_id)
        (folder / "commits").mkdir(parents=True)
        (folder / "objects").mkdir()
        (folder / "repo.json").write_text(json.dumps({"private": bool(private), "owner": owner}))
        tree = {".gitattributes": self._store(repo_type, repo_id, DEFAULT_GITATTRIBUTES.encode(), lfs=False)}
        oid = self._write_commit(repo_type, repo_id, None, tree, "initial commit", "")
        self._write_refs(repo_type, repo_id, {"branches": {"main": oid}, "tags": {}})

    def _meta(self, repo_type: str, repo_id: str) -> dict:
        return json.loads((self._repo_dir(repo_type, repo_id) / "repo.json").read_text())

    def _refs(self, repo_type: str, repo_id: str) -> dict:
        return json.loads((self._repo_dir(repo_type, repo_id) / "refs.json").read_text())

    def _write_refs(self, repo_type: str, repo_id: str, refs: dict) -> None:
        path = self._repo_dir(repo_type, repo_id) / "refs.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(refs))
        os.replace(tmp, path)

    def _commit(self, repo_type: str, repo_id: str, oid: str) -> dict:
        return json.loads((self._repo_dir(repo_type, repo_id) / "commits" / f"{oid}.json").read_text())

    def _write_commit(self, repo_type: str, repo_id: str, parent: Optional[str], tree: dict, title: str,
                      description: str, author: str = "gradfix-test") -> str:
        self._counter += 1
        date = dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")
        body = json.dumps([parent, tree, title, description, date, self._counter], sort_keys=True)
        oid = hashlib.sha1(body.encode()).hexdigest()
        commit = {"oid": oid, "parent": parent, "title": title, "description": description, "date": date,
                  "author": author, "files": tree}
        path = self._repo_dir(repo_type, repo_id) / "commits" / f"{oid}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(commit))
        os.replace(tmp, path)
        return oid

    def _object(self, repo_type: str, repo_id: str, sha: str) -> Path:
        return self._repo_dir(repo_type, repo_id) / "objects" / sha

    def _store(self, repo_type: str, repo_id: str, data: bytes, lfs: bool) -> dict:
        sha = hashlib.sha256(data).hexdigest()
        target = self._object(repo_type, repo_id, sha)
        if not target.exists():
            tmp = target.with_name(f".tmp-{secrets.token_hex(8)}")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        return self._entry(sha, len(data), lfs, data)

    @staticmethod
    def _entry(sha: str, size: int, lfs: bool, data: Optional[bytes] = None) -> dict:
        git_oid = git_blob_oid(LFS_POINTER.format(sha=sha, size=size).encode()) if lfs else git_blob_oid(data)
        return {"sha256": sha, "size": size, "git_oid": git_oid, "lfs": lfs}

    def _is_lfs(self, repo_type: str, repo_id: str, tree: dict, path: str, size: int) -> bool:
        if size >= LFS_THRESHOLD:
            return True
        attributes = tree.get(".gitattributes")
        text = self._object(repo_type, repo_id, attributes["sha256"]).read_text() if attributes else ""
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 2 and "filter=lfs" in parts[1:]:
                pattern = parts[0]
                target = path if "/" in pattern else path.rsplit("/", 1)[-1]
                if fnmatch.fnmatch(target, pattern):
                    return True
        return False

    def _resolve(self, repo_type: str, repo_id: str, revision: str) -> str:
        refs = self._refs(repo_type, repo_id)
        if revision in refs["branches"]:
            return refs["branches"][revision]
        if revision in refs["tags"]:
            return refs["tags"][revision]
        commit_file = self._repo_dir(repo_type, repo_id) / "commits" / f"{revision}.json"
        if COMMIT_RE.match(revision) and commit_file.is_file():
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


def _iso(commit: dict) -> str:
    return commit["date"]


class _Handler(BaseHTTPRequestHandler):
    """Routes one request; every answer carries Content-Length (HTTP/1.1 keep-alive, as httpx expects)."""

    protocol_version = "HTTP/1.1"
    server_hub: LocalHub

    def log_message(self, fmt, *args):  # quiet
        pass

    # ------------------------------------------------------------ plumbing
    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        hub = self.server_hub
        self._status = 0
        self._body_consumed = False
        try:
            fault = self._matching_fault(method)
            self._fault = fault
            if fault is not None and fault.action == "hang" and method == "PUT" and "/lfs-objects/" in self.path:
                pass  # handled inside the upload (_lfs_object)
            elif fault is not None and fault.action in ("drop", "hang"):
                self._read_body(limit=fault.read_bytes)
                if fault.action == "hang":
                    fault.started.set()
                    fault.release.wait(60)
                self._drop()
                return
            elif fault is not None:
                self._read_body()
                raise HubError(fault.status, f"injected failure ({fault.status})")
            self.user, self.role = self._authenticate()
            self._route(method)
        except HubError as err:
            if not self._body_consumed:
                with contextlib.suppress(Exception):
                    self._read_body()
            self._send_json({"error": err.message, **err.body}, err.status, headers={
                **({"X-Error-Code": err.code} if err.code else {}), "X-Error-Message": err.message, **err.headers},
                head=method == "HEAD")
        except (ConnectionError, OSError):
            self.close_connection = True
        finally:
            with hub.lock:
                hub.requests.append((method, self.path, self._status))

    def _matching_fault(self, method: str) -> Optional[Fault]:
        hub = self.server_hub
        with hub.lock:
            for fault in hub.faults:
                if fault.method == method and fault.path_contains in self.path and fault.hits < fault.times:
                    fault.hits += 1
                    fault.paths.append(self.path)
                    return fault
        return None

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.connection.close()

    def _authenticate(self) -> tuple[Optional[str], Optional[str]]:
        header = self.headers.get("authorization")
        if not header:
            return None, None
        self.server_hub.auth_headers_seen.append(header)
        token = header.split(" ", 1)[1] if " " in header else header
        known = self.server_hub.tokens.get(token)
        if known is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return known

    def _read_body(self, limit: Optional[int] = None, sink=None) -> bytes:
        """The request body (Content-Length or chunked), into ``sink`` (a callable) or returned."""
        self._body_consumed = True
        chunks: list[bytes] = []
        write = sink or chunks.append
        read = 0
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                line = self.rfile.readline()
                if not line:
                    raise ConnectionError("client went away")
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                data = self.rfile.read(size)
                if len(data) < size:
                    raise ConnectionError("client went away")
                self.rfile.readline()
                write(data)
                read += len(data)
                if limit is not None and read >= limit:
                    break
        else:
            remaining = int(self.headers.get("content-length") or 0)
            if limit is not None:
                remaining = min(remaining, limit)
            while remaining > 0:
                data = self.rfile.read(min(remaining, 1 << 16))
                if not data:
                    raise ConnectionError("client went away")
                write(data)
                remaining -= len(data)
        return b"".join(chunks)

    def _send(self, status: int, body: bytes = b"", headers: Optional[dict] = None, head: bool = False) -> None:
        self._status = status
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _send_json(self, payload, status: int = 200, headers: Optional[dict] = None, head: bool = False) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})}, head)

    # ------------------------------------------------------------ routing
    def _route(self, method: str) -> None:
        parts = urlsplit(self.path)
        segments = parts.path.strip("/").split("/")  # still percent-encoded: revisions may contain %2F
        self.query = parse_qs(parts.query)
        hub = self.server_hub
        if segments[0] == "api":
            rest = segments[1:]
            if rest == ["whoami-v2"] and method == "GET":
                return self._whoami()
            if rest == ["repos", "create"] and method == "POST":
                return self._create_repo()
            if rest == ["validate-yaml"] and method == "POST":
                return self._validate_yaml()
            if len(rest) >= 3 and rest[0] in ("models", "datasets"):
                repo_type, repo_id, tail = rest[0][:-1], unquote(rest[1]) + "/" + unquote(rest[2]), rest[3:]
                return self._repo_api(method, repo_type, repo_id, tail)
        if segments[0] == "lfs-objects":
            return self._lfs_object(method, segments[1:])
        repo_type = "dataset" if segments[0] == "datasets" else "model"
        body = segments[1:] if repo_type == "dataset" else segments
        if len(body) >= 4 and body[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve_file(method, repo_type, f"{body[0]}/{body[1]}", unquote(body[3]),
                                      "/".join(unquote(s) for s in body[4:]))
        if len(body) == 6 and body[1].endswith(".git") and body[2:] == ["info", "lfs", "objects", "batch"]:
            return self._lfs_batch(repo_type, f"{body[0]}/{body[1][:-4]}")
        raise HubError(404, f"no such endpoint in the test Hub: {method} {parts.path}")

    def _repo_api(self, method: str, repo_type: str, repo_id: str, tail: list[str]) -> None:
        if not tail and method == "GET":
            return self._info(repo_type, repo_id, "main")
        if tail[:1] == ["revision"] and len(tail) == 2 and method == "GET":
            return self._info(repo_type, repo_id, unquote(tail[1]))
        if tail[:1] == ["tree"] and len(tail) >= 2 and method == "GET":
            return self._tree(repo_type, repo_id, unquote(tail[1]), "/".join(unquote(s) for s in tail[2:]))
        if tail == ["refs"] and method == "GET":
            return self._list_refs(repo_type, repo_id)
        if tail[:1] == ["commits"] and len(tail) == 2 and method == "GET":
            return self._list_commits(repo_type, repo_id, unquote(tail[1]))
        if tail[:1] == ["preupload"] and len(tail) == 2 and method == "POST":
            return self._preupload(repo_type, repo_id, unquote(tail[1]))
        if tail[:1] == ["commit"] and len(tail) == 2 and method == "POST":
            return self._commit(repo_type, repo_id, unquote(tail[1]))
        if tail[:1] == ["branch"] and len(tail) >= 2 and method == "POST":
            return self._create_branch(repo_type, repo_id, unquote("/".join(tail[1:])))
        raise HubError(404, f"no such endpoint in the test Hub: {method} /api/{repo_type}s/{repo_id}/{'/'.join(tail)}")

    # ------------------------------------------------------------ permissions
    def _can_write(self, namespace: str) -> bool:
        hub = self.server_hub
        return self.role == "write" and (namespace == self.user or self.user in hub.orgs.get(namespace, set()))

    def _visible(self, repo_type: str, repo_id: str) -> dict:
        hub = self.server_hub
        if not hub._repo_dir(repo_type, repo_id).is_dir():
            raise HubError(404, "Repository not found", "RepoNotFound")
        meta = hub._meta(repo_type, repo_id)
        namespace = repo_id.split("/")[0]
        member = self.user is not None and (namespace == self.user or self.user in hub.orgs.get(namespace, set()))
        if meta["private"] and not member:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return meta

    def _need_write(self, repo_id: str) -> None:
        if self.user is None:
            raise HubError(401, "You must be authenticated to write to this repository")
        if not self._can_write(repo_id.split("/")[0]):
            raise HubError(403, f"You don't have the rights to write to {repo_id}")

    # ------------------------------------------------------------ read endpoints
    def _whoami(self) -> None:
        if self.user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        hub = self.server_hub
        orgs = [{"name": name, "type": "org"} for name, members in hub.orgs.items() if self.user in members]
        self._send_json({"type": "user", "name": self.user, "orgs": orgs,
                         "auth": {"type": "access_token", "accessToken": {"role": self.role}}})

    def _info(self, repo_type: str, repo_id: str, revision: str) -> None:
        hub = self.server_hub
        with hub.lock:
            meta = self._visible(repo_type, repo_id)
            oid = hub._resolve(repo_type, repo_id, revision)
            commit = hub._commit(repo_type, repo_id, oid)
        siblings = [{"rfilename": path} for path in sorted(commit["files"])]
        self._send_json({"_id": hashlib.md5(repo_id.encode()).hexdigest()[:24], "id": repo_id,
                         "author": repo_id.split("/")[0], "sha": oid, "private": meta["private"],
                         "disabled": False, "gated": False, "lastModified": _iso(commit), "downloads": 0,
                         "likes": 0, "tags": [], "siblings": siblings})

    def _tree(self, repo_type: str, repo_id: str, revision: str, prefix: str) -> None:
        hub = self.server_hub
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("true", "1")
        with hub.lock:
            self._visible(repo_type, repo_id)
            commit = hub._commit(repo_type, repo_id, hub._resolve(repo_type, repo_id, revision))
        files = commit["files"]
        base = prefix.rstrip("/") + "/" if prefix else ""
        if prefix and not any(p.startswith(base) for p in files):
            raise HubError(404, f"{prefix} does not exist at {revision}", "EntryNotFound")
        entries, folders = [], set()
        for path in sorted(files):
            if not path.startswith(base):
                continue
            relative = path[len(base):]
            directories = relative.split("/")[:-1]
            for depth in range(1, len(directories) + 1):
                if recursive or depth == 1:
                    folders.add(base + "/".join(directories[:depth]))
            if recursive or "/" not in relative:
                entry = files[path]
                item = {"type": "file", "oid": entry["git_oid"], "size": entry["size"], "path": path}
                if entry["lfs"]:
                    pointer = LFS_POINTER.format(sha=entry["sha256"], size=entry["size"])
                    item["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": len(pointer)}
                entries.append(item)
        entries += [{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0, "path": f}
                    for f in sorted(folders)]
        self._send_json(entries)

    def _list_refs(self, repo_type: str, repo_id: str) -> None:
        hub = self.server_hub
        with hub.lock:
            self._visible(repo_type, repo_id)
            refs = hub._refs(repo_type, repo_id)
        self._send_json({
            "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": o} for n, o in refs["branches"].items()],
            "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": o} for n, o in refs["tags"].items()],
            "converts": [], "pullRequests": []})

    def _list_commits(self, repo_type: str, repo_id: str, revision: str) -> None:
        hub = self.server_hub
        with hub.lock:
            self._visible(repo_type, repo_id)
            history = hub.commits(repo_id, repo_type, revision)
        self._send_json([{"id": c["oid"], "title": c["title"], "message": c["description"], "date": c["date"],
                          "authors": [{"user": c["author"]}]} for c in history])

    def _resolve_file(self, method: str, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        hub = self.server_hub
        with hub.lock:
            self._visible(repo_type, repo_id)
            oid = hub._resolve(repo_type, repo_id, revision)
            entry = hub._commit(repo_type, repo_id, oid)["files"].get(path)
        if entry is None:
            raise HubError(404, f"{path} does not exist at {revision}", "EntryNotFound", {"X-Repo-Commit": oid})
        data = hub._object(repo_type, repo_id, entry["sha256"]).read_bytes()
        etag = entry["sha256"] if entry["lfs"] else entry["git_oid"]
        headers = {"X-Repo-Commit": oid, "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if entry["lfs"]:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": entry["size"]})
        status = 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("range", ""))
        if match and method == "GET":
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start:end + 1], 206
        self._send(status, data, headers, head=method == "HEAD")

    # ------------------------------------------------------------ write endpoints
    def _create_repo(self) -> None:
        payload = json.loads(self._read_body() or b"{}")
        repo_type = payload.get("type") or "model"
        namespace = payload.get("organization") or self.user
        if self.user is None:
            raise HubError(401, "You must be authenticated to create a repository")
        if not self._can_write(namespace):
            raise HubError(403, f"You don't have the rights to create a {repo_type} under the namespace {namespace}")
        repo_id = f"{namespace}/{payload['name']}"
        hub = self.server_hub
        private = payload.get("private", payload.get("visibility") == "private")
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self._base()}/{prefix}{repo_id}"
        with hub.lock:
            if hub._repo_dir(repo_type, repo_id).is_dir():  # the Hub's 409 also carries the url
                raise HubError(409, f"You already created this {repo_type} repo", body={"url": url})
            hub._create_repo(repo_type, repo_id, private=bool(private), owner=self.user)
        self._send_json({"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self) -> None:
        payload = json.loads(self._read_body() or b"{}")
        content = payload.get("content", "")
        errors = []
        if content.startswith("---"):
            try:
                front = yaml.safe_load(content.split("---", 2)[1])
                if front is not None and not isinstance(front, dict):
                    errors.append({"message": "metadata must be a YAML mapping"})
            except (yaml.YAMLError, IndexError) as exc:
                errors.append({"message": f"invalid YAML: {exc}"})
        self._send_json({"errors": errors, "warnings": []}, 400 if errors else 200)

    def _create_branch(self, repo_type: str, repo_id: str, branch: str) -> None:
        payload = json.loads(self._read_body() or b"{}")
        hub = self.server_hub
        with hub.lock:
            self._visible(repo_type, repo_id)
            self._need_write(repo_id)
            refs = hub._refs(repo_type, repo_id)
            if branch in refs["branches"]:
                raise HubError(409, f"Branch {branch} already exists")
            refs["branches"][branch] = hub._resolve(repo_type, repo_id, payload.get("startingPoint") or "main")
            hub._write_refs(repo_type, repo_id, refs)
        self._send_json({})

    def _preupload(self, repo_type: str, repo_id: str, revision: str) -> None:
        payload = json.loads(self._read_body() or b"{}")
        hub = self.server_hub
        with hub.lock:
            self._visible(repo_type, repo_id)
            self._need_write(repo_id)
            tree = hub._commit(repo_type, repo_id, hub._resolve(repo_type, repo_id, revision))["files"]
        out = []
        for item in payload.get("files", []):
            lfs = hub._is_lfs(repo_type, repo_id, tree, item["path"], int(item["size"]))
            remote = tree.get(item["path"])
            oid = None if remote is None else (remote["sha256"] if remote["lfs"] else remote["git_oid"])
            out.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                        "oid": oid})
        self._send_json({"files": out, "commitOid": None})

    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        payload = json.loads(self._read_body() or b"{}")
        hub = self.server_hub
        with hub.lock:
            self._visible(repo_type, repo_id)
            self._need_write(repo_id)
        if payload.get("operation") != "upload":
            raise HubError(400, "only uploads are supported by the test Hub")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            item = {"oid": oid, "size": size, "authenticated": True}
            stored = hub._object(repo_type, repo_id, oid)
            if not (stored.is_file() and stored.stat().st_size == size):
                signature = secrets.token_hex(16)
                with hub.lock:
                    hub._signatures[signature] = (repo_type, repo_id, oid, size)
                item["actions"] = {
                    "upload": {"href": f"{self._base()}/lfs-objects/{oid}?sig={signature}"},
                    "verify": {"href": f"{self._base()}/lfs-objects/{oid}/verify?sig={signature}"}}
            objects.append(item)
        self._send_json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                        headers={"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_object(self, method: str, segments: list[str]) -> None:
        """The signed upload URL of one LFS object (like S3's: no token), and its verify URL."""
        hub = self.server_hub
        with hub.lock:
            signed = hub._signatures.get(self.query.get("sig", [""])[0])
        oid = segments[0] if segments else ""
        if signed is None or signed[2] != oid:
            raise HubError(403, "invalid or missing upload signature")
        repo_type, repo_id, _, size = signed
        target = hub._object(repo_type, repo_id, oid)
        if method == "PUT" and len(segments) == 1:
            tmp = target.with_name(f".upload-{secrets.token_hex(8)}")
            digest, written, fault = hashlib.sha256(), [0], self._fault
            try:
                with open(tmp, "wb") as handle:
                    def sink(data: bytes) -> None:
                        digest.update(data)
                        handle.write(data)
                        written[0] += len(data)
                        if fault is not None and not fault.started.is_set() and written[0] >= (fault.read_bytes or 0):
                            handle.flush()
                            fault.started.set()  # a partial upload is on disk; the test may kill the client now
                            fault.release.wait(60)
                    try:
                        self._read_body(sink=sink)
                    except (ConnectionError, OSError):
                        with hub.lock:
                            hub.aborted_uploads.append(oid)
                        raise
                if digest.hexdigest() != oid or tmp.stat().st_size != size:
                    raise HubError(400, f"uploaded content does not match oid {oid} / size {size}")
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
            return self._send(200, b"", {"ETag": f'"{oid}"'})
        if method == "POST" and len(segments) == 2 and segments[1] == "verify":
            payload = json.loads(self._read_body() or b"{}")
            if payload.get("oid") != oid or not target.is_file() or target.stat().st_size != payload.get("size"):
                raise HubError(404, f"object {oid} was not uploaded")
            return self._send_json({})
        raise HubError(404, f"no such LFS endpoint: {method} {self.path}")

    def _commit(self, repo_type: str, repo_id: str, revision: str) -> None:
        hub = self.server_hub
        if self.query.get("create_pr"):
            raise HubError(400, "pull requests are not supported by the test Hub")
        lines = [json.loads(line) for line in self._read_body().splitlines() if line.strip()]
        with hub.lock:
            self._visible(repo_type, repo_id)
            self._need_write(repo_id)
            refs = hub._refs(repo_type, repo_id)
            if revision not in refs["branches"]:
                raise HubError(404, f"Invalid rev id: {revision} (commits go to a branch)", "RevisionNotFound")
            head = refs["branches"][revision]
            header = next((line["value"] for line in lines if line["key"] == "header"), None)
            if header is None or not header.get("summary"):
                raise HubError(400, "a commit needs a header with a summary")
            if header.get("parentCommit") and header["parentCommit"] != head:
                raise HubError(412, f"A commit has happened since {header['parentCommit']}; the branch is at {head}")
            tree = dict(hub._commit(repo_type, repo_id, head)["files"])
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "file":
                    data = base64.b64decode(value["content"])
                    tree[value["path"]] = hub._store(repo_type, repo_id, data, lfs=False)
                elif key == "lfsFile":
                    stored = hub._object(repo_type, repo_id, value["oid"])
                    if not stored.is_file() or ("size" in value and stored.stat().st_size != value["size"]):
                        raise HubError(422, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                    tree[value["path"]] = hub._entry(value["oid"], stored.stat().st_size, True)
                elif key == "deletedFile":
                    if tree.pop(value["path"], None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    for path in [p for p in tree if p.startswith(prefix)]:
                        del tree[path]
                elif key != "header":
                    raise HubError(400, f"unknown commit operation {key!r}")
            oid = hub._write_commit(repo_type, repo_id, head, tree, header["summary"], header.get("description", ""),
                                    author=self.user)
            refs["branches"][revision] = oid  # the branch moves last: the commit is published whole or not at all
            hub._write_refs(repo_type, repo_id, refs)
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        self._send_json({"success": True, "commitOid": oid, "hookOutput": "",
                         "commitUrl": f"{self._base()}/{prefix}{repo_id}/commit/{oid}"})

    def _base(self) -> str:
        return self.server_hub.url


def free_port_url() -> str:
    """The URL of a port on 127.0.0.1 where nothing listens (a Hub that is down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
