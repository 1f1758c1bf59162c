"""One votes file on disk (safetensors): its metadata and layout checked, its tensors read one at a time.

Why apart from :mod:`.votes_file`: a sharded votes file (:mod:`.sharded_votes`) is several of these files, each
read and checked the same way, which :class:`~gradfix_hf.storage.votes_file.VotesFile` then presents as one.

Layout: ``<param name>`` → int8/int16 vote v = Σ_n sign(−g_n) (for ``aggregation: mean`` the single sign of
−Σ_n g_n); ``evidence_rows/<name>`` → uint8 per row, or ``evidence_bits/<name>`` → packed bits, only for tensors
where some coordinate got no gradient from any sample.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from ..errors import VotesFileError
from .safetensors_format import DTYPES, pread_tensor, read_header, read_metadata

FORMAT = "gradfix-votes"
FORMAT_VERSION = "1"
ROWS, BITS = "evidence_rows/", "evidence_bits/"
REQUIRED_METADATA = ("format", "format_version", "n_samples", "aggregation", "objective", "target",
                     "data_fingerprint", "params_fingerprint", "library_version")


def is_votes_file(path: Path) -> bool:
    """Whether ``path`` is a gradfix votes file (by its metadata), the only file ``overwrite`` may replace."""
    try:
        return read_metadata(Path(path)).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def stored_tensors(votes: Mapping[str, torch.Tensor], evidence: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a votes file holds: the votes, and partial evidence as one flag per row where every row is all or
    nothing, else as packed bits."""
    tensors = {name: v.contiguous() for name, v in votes.items()}
    for name, ev in evidence.items():
        if ev.dim() >= 2 and bool((ev == ev[..., :1]).all()):
            tensors[ROWS + name] = ev.reshape(ev.shape[0], -1)[:, 0].to(torch.uint8).contiguous()
        else:
            tensors[BITS + name] = torch.from_numpy(np.packbits(ev.flatten().numpy()))
    return tensors


def read_votes_file(path: Path) -> tuple[dict, "LazyTensors", "LazyTensors"]:
    """(metadata, votes, evidence) of one votes file, checked now; tensors are read when asked for."""
    path = Path(path)
    if not path.is_file():
        raise VotesFileError(f"{path}: votes file not found.")
    try:
        handle = safe_open(str(path), framework="pt")  # validates the header and the file's length
        metadata = dict(handle.metadata() or {})
        entries = read_header(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise VotesFileError(f"{path}: corrupt or truncated votes file: {exc}") from None
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if metadata.get("format") != FORMAT or missing:
        raise VotesFileError(f"{path}: not a gradfix votes file (metadata lacks {missing or ['format']}).")
    n_samples = metadata["n_samples"]
    if not n_samples.isdigit() or int(n_samples) < 1:
        raise VotesFileError(f"{path}: corrupt metadata: n_samples is {n_samples!r}, not a positive integer.")
    if metadata["aggregation"] not in ("majority", "mean"):
        raise VotesFileError(f"{path}: corrupt metadata: aggregation is {metadata['aggregation']!r}, "
                             "not 'majority' or 'mean'.")
    try:
        not_voted = json.loads(metadata.get("not_voted") or "[]")
    except ValueError:
        not_voted = None
    if not isinstance(not_voted, list) or not all(isinstance(n, str) for n in not_voted):
        raise VotesFileError(f"{path}: corrupt metadata: not_voted is {metadata['not_voted'][:80]!r}, not a "
                             "JSON list of tensor names.")
    shapes = {key: entry.shape for key, entry in entries.items()}
    both = [n for n in not_voted if n in shapes]
    if both:
        raise VotesFileError(f"{path}: corrupt file: {both[0]!r} has votes but is listed as not voted.")
    dtypes = {key: entry.dtype for key, entry in entries.items()}
    names = [k for k in shapes if not k.startswith((ROWS, BITS))]
    bad = [k for k in names if dtypes[k] not in _INTEGER_DTYPES]
    if bad:
        kind = DTYPES.get(dtypes[bad[0]], dtypes[bad[0]])
        raise VotesFileError(f"{path}: votes must be signed integers; {bad[0]!r} is {kind}.")
    evidence_keys = {}
    for key in shapes:
        if not key.startswith((ROWS, BITS)):
            continue
        name = key[len(ROWS):] if key.startswith(ROWS) else key[len(BITS):]
        if name not in shapes or name.startswith((ROWS, BITS)):
            raise VotesFileError(f"{path}: corrupt file: evidence {key!r} for a tensor with no votes.")
        shape, stored = shapes[name], shapes[key]
        if key.startswith(ROWS) and (len(stored) != 1 or len(shape) < 1 or stored[0] != shape[0]):
            raise VotesFileError(f"{path}: corrupt file: evidence {key!r} has shape {list(stored)} "
                                 f"but {name!r} has {list(shape)}.")
        if key.startswith(BITS) and (dtypes[key] != "U8" or math.prod(stored) * 8 < math.prod(shape)):
            kind = DTYPES.get(dtypes[key], dtypes[key])
            raise VotesFileError(f"{path}: corrupt file: evidence {key!r} ({kind}, {math.prod(stored)} "
                                 f"bytes) does not cover the {math.prod(shape)} coordinates of {name!r}.")
        evidence_keys[name] = key
    reader = VotesReader(handle, path, entries)
    votes = LazyTensors(names, lambda name: reader.get(name), {n: shapes[n] for n in names})
    evidence = LazyTensors(list(evidence_keys), lambda name: decode_evidence(
        reader.get(evidence_keys[name]), evidence_keys[name], shapes[name]), {n: shapes[n] for n in evidence_keys})
    return metadata, votes, evidence


_INTEGER_DTYPES = ("I8", "I16", "I32", "I64")


class VotesReader:
    """Reads one tensor of the file into fresh memory each time (``pread``, no memory map: a votes file read
    tensor by tensor never stays resident; ``safe_open`` where that is not possible)."""

    def __init__(self, handle, path: Path, entries: dict):
        self.handle, self.path, self.entries = handle, path, entries

    def get(self, key: str) -> torch.Tensor:
        entry = self.entries.get(key)
        try:
            tensor = None
            if entry is not None and entry.dtype in DTYPES:
                fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                try:
                    tensor = pread_tensor(fd, entry, DTYPES[entry.dtype])
                finally:
                    os.close(fd)
            return self.handle.get_tensor(key) if tensor is None else tensor
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise VotesFileError(f"{self.path}: corrupt or truncated votes file (tensor {key!r}): {exc}") from None


class LazyTensors(Mapping):
    """A read-only name → tensor mapping that reads a tensor each time it is asked for (shapes known upfront)."""

    def __init__(self, names: list[str], read: Callable[[str], torch.Tensor], shapes: dict[str, tuple[int, ...]]):
        self._names, self._read, self._shapes = list(names), read, shapes

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._shapes:
            raise KeyError(name)
        return self._read(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._shapes

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]


def decode_evidence(value: torch.Tensor, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The full-shape bool evidence of a tensor from its stored form (one flag per row, or packed bits)."""
    if key.startswith(ROWS):
        return value.bool().reshape(-1, *([1] * (len(shape) - 1))).expand(shape).clone()
    bits = np.unpackbits(value.reshape(-1).numpy())
    return torch.from_numpy(bits[: math.prod(shape)].astype(bool)).reshape(shape)
