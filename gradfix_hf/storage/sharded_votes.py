"""A sharded votes file: one votes file per shard of θ_B (its rows of every tensor) and an index that binds them.

Why: a sharded (FSDP2) vote leaves each process with its rows of the votes only; gathering them on one process
would need the memory the sharding saved. Each shard is written by the process that holds it, as a complete
votes file of its rows (``votes-00001-of-00002.safetensors``, with the vote's metadata and its place), and the
index (``votes.safetensors.index.json``, as Hugging Face names sharded checkpoints) is written last, by the main
process, once every shard is in place: a vote that failed anywhere leaves no index, so nothing that looks like
a complete votes file. Every shard of one vote carries the same random ``vote_id``, so a shard left from
another vote (a foreign shard) is refused, as is a missing one. A reader reads a tensor's rows from each shard
file when asked for it: the streaming merge never holds more than one tensor's votes.
"""
from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import GradFixError, VotesFileError
from ..runtime import ProcessContext, on_main_process
from .destinations import atomic_file
from .safetensors_format import write_file
from .votes_format import LazyTensors, is_votes_file, read_votes_file, stored_tensors

INDEX_SUFFIX = ".index.json"
INDEX_FORMAT = "gradfix-votes-index"


@dataclass(frozen=True)
class ShardInfo:
    """Which shard of a sharded vote a process holds, out of how many, and the full shape of every tensor."""

    index: int
    count: int
    shapes: dict[str, tuple[int, ...]]
    writes: bool = True  # whether this process writes its shard (one process per shard: the first replica's)


def shard_rows(rows: int, shards: int, index: int) -> range:
    """The rows of dim 0 that shard ``index`` of ``shards`` holds: ``torch.chunk``'s split, as FSDP2's ``Shard(0)``
    (chunks of ⌈rows/shards⌉; the last ones may be shorter or empty)."""
    chunk = -(-rows // shards) if rows else 0
    return range(min(rows, index * chunk), min(rows, (index + 1) * chunk))


def index_path(path: os.PathLike) -> Path:
    """Where the index of a sharded votes file written to ``path`` goes: ``path`` + ``.index.json``."""
    path = Path(path)
    return path if path.name.endswith(INDEX_SUFFIX) else path.with_name(path.name + INDEX_SUFFIX)


def shard_path(path: os.PathLike, index: int, count: int) -> Path:
    """Shard ``index`` (from 0) of ``count`` of a sharded votes file written to ``path``."""
    base = Path(str(index_path(path))[:-len(INDEX_SUFFIX)])
    return base.with_name(f"{base.name.removesuffix('.safetensors')}-{index + 1:05d}-of-{count:05d}.safetensors")


def sharded_index_path(path: Path) -> Optional[Path]:
    """The index to read for ``path``: itself if it names an index, its index if only that exists, else None."""
    if path.name.endswith(INDEX_SUFFIX):
        return path
    candidate = index_path(path)
    return candidate if not path.exists() and candidate.is_file() else None


def is_votes_index(path: Path) -> bool:
    """Whether ``path`` is the index of a sharded votes file (the only index ``overwrite`` may replace)."""
    try:
        return json.loads(Path(path).read_text()).get("format") == INDEX_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def save_sharded_votes(part: Any, path: os.PathLike, *, context: ProcessContext, overwrite: bool = False) -> Path:
    """Write a sharded votes file from every process's part (a ``VotesFile`` with ``shard`` set); collective.

    The processes whose ``shard.writes`` write their shard; the main process then writes the index. Returns the
    index's path. If any process fails, the shards written are removed and every process raises.
    """
    shard: ShardInfo = part.shard
    index = index_path(path)
    vote_id = context.broadcast_object(uuid.uuid4().hex)

    def clear_old_index():  # while the shards are replaced, no index may point at a mix of old and new ones
        if overwrite and index.is_file() and is_votes_index(index):
            index.unlink()

    failure, written = None, None
    try:
        on_main_process(context, clear_old_index)
        if shard.writes:
            metadata = {**part.metadata, "vote_id": vote_id, "shard_index": str(shard.index),
                        "shard_count": str(shard.count)}
            tensors = stored_tensors(part.votes, part.evidence)
            target = shard_path(path, shard.index, shard.count)
            written = atomic_file(target, lambda temporary: write_file(temporary, tensors, metadata),
                                  overwrite=overwrite, recognise=is_votes_file, where="votes shard")
    except Exception as exc:  # shared below: no process may go on to write an index over a missing shard
        failure = exc
    messages = context.all_gather_object(None if failure is None else f"{type(failure).__name__}: {failure}")
    failed = [(rank, message) for rank, message in enumerate(messages) if message is not None]
    if failed:
        if written is not None:
            written.unlink(missing_ok=True)
        if failure is not None:
            raise failure
        raise GradFixError(f"writing the sharded votes failed on process {failed[0][0]}: {failed[0][1]}")
    content = {"format": INDEX_FORMAT, "format_version": "1", "vote_id": vote_id, "metadata": part.metadata,
               "shards": [shard_path(path, i, shard.count).name for i in range(shard.count)],
               "shapes": {name: list(shape) for name, shape in sorted(shard.shapes.items())}}
    on_main_process(context, lambda: atomic_file(
        index, lambda temporary: temporary.write_text(json.dumps(content, indent=1, sort_keys=True) + "\n"),
        overwrite=overwrite, recognise=is_votes_index, where="votes index"))
    return index


def read_sharded_votes(index: Path) -> tuple[dict, LazyTensors, LazyTensors]:
    """(metadata, votes, evidence) of a sharded votes file, every shard checked now against the index."""
    if not index.is_file():
        raise VotesFileError(f"{index}: votes index not found.")
    try:
        content = json.loads(index.read_text())
        vote_id, metadata, files = content["vote_id"], dict(content["metadata"]), list(content["shards"])
        shapes = {name: tuple(int(d) for d in shape) for name, shape in content["shapes"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise VotesFileError(f"{index}: corrupt votes index: {exc}") from None
    if content.get("format") != INDEX_FORMAT:
        raise VotesFileError(f"{index}: not a gradfix votes index (format {content.get('format')!r}).")
    shards = []
    for i, name in enumerate(files):
        path = index.parent / name
        if not path.is_file():
            raise VotesFileError(f"{index}: shard {i + 1} of {len(files)} ({name}) is missing.")
        meta, votes, evidence = read_votes_file(path)
        if meta.get("vote_id") != vote_id:
            raise VotesFileError(f"{path}: a foreign shard: it belongs to another vote (vote_id "
                                 f"{meta.get('vote_id')!r}, the index {index.name} has {vote_id!r}).")
        if (meta.get("shard_index"), meta.get("shard_count")) != (str(i), str(len(files))):
            raise VotesFileError(f"{path}: is shard {meta.get('shard_index')} of {meta.get('shard_count')}, but the "
                                 f"index lists it as shard {i} of {len(files)}.")
        if set(votes) != set(shapes):
            raise VotesFileError(f"{path}: holds other tensors than its index {index.name} lists "
                                 f"(e.g. {sorted(set(votes) ^ set(shapes))[:1]}).")
        for tensor, shape in shapes.items():
            rows = (len(shard_rows(shape[0], len(files), i)), *shape[1:])
            if votes.shape(tensor) != rows:
                raise VotesFileError(f"{path}: tensor {tensor!r} has shape {list(votes.shape(tensor))}, but shard {i} "
                                     f"of {len(files)} of a {list(shape)} tensor holds {list(rows)}.")
        shards.append((votes, evidence))

    def evidence_rows(name: str, votes: LazyTensors, evidence: LazyTensors) -> torch.Tensor:
        """A shard's evidence of ``name``: stored where partial in that shard, else full."""
        return evidence[name] if name in evidence else torch.ones(votes.shape(name), dtype=torch.bool)

    names = sorted(shapes)
    partial = [name for name in names if any(name in evidence for _, evidence in shards)]
    votes = LazyTensors(names, lambda name: torch.cat([v[name] for v, _ in shards]), shapes)
    evidence = LazyTensors(partial, lambda name: torch.cat([evidence_rows(name, *part) for part in shards]),
                           {name: shapes[name] for name in partial})
    return metadata, votes, evidence
