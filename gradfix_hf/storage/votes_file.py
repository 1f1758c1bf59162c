"""The votes file between the two stages: integer votes per target parameter, evidence, and metadata.

Layout (safetensors): ``<param name>`` → int8/int16 vote v = Σ_n sign(−g_n) (for ``aggregation: mean`` the
single sign of −Σ_n g_n); ``evidence_rows/<name>`` → uint8 per row, or ``evidence_bits/<name>`` → packed
bits, only for tensors where some coordinate got no gradient from any sample. Metadata records N, the
objective, the target and its revision, a data fingerprint and a fingerprint of the voted parameter set.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from ..errors import VotesFileError
from .destinations import atomic_file
from .safetensors_format import DTYPES, pread_tensor, read_header, read_metadata, write_file

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


def vote_dtype(n_samples: int) -> torch.dtype:
    """Smallest integer type that holds any sum of ``n_samples`` signs."""
    return torch.int8 if n_samples <= 127 else torch.int16 if n_samples <= 32767 else torch.int32


def params_fingerprint(shapes: dict[str, tuple[int, ...]]) -> str:
    text = "\n".join(f"{name}:{list(shape)}" for name, shape in sorted(shapes.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class VotesFile:
    """Votes of one target on one set of samples. ``evidence[name]`` (bool, full shape) only where partial."""

    votes: Mapping[str, torch.Tensor]
    metadata: dict[str, str]
    evidence: Mapping[str, torch.Tensor] = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        return int(self.metadata["n_samples"])

    @property
    def not_voted(self) -> list[str]:
        """Transported tensors left out of the vote because τ_A is zero everywhere on them (not ties: no vote)."""
        return list(json.loads(self.metadata.get("not_voted") or "[]"))

    def check_not_voted(self, name: str, tau: torch.Tensor) -> None:
        """A tensor without votes merges only where this file left it out as unmoved and τ_A is zero everywhere."""
        where = f"votes file (target {self.metadata['target']})"
        if name not in self.not_voted:
            raise VotesFileError(f"{where}: no votes for tensor {name!r}.")
        if bool(tau.any()):
            raise VotesFileError(f"{where}: tensor {name!r} was left out of the vote as unmoved (τ_A zero everywhere), "
                                 f"but this merge's τ_A changes {int(torch.count_nonzero(tau))} of its coordinates: "
                                 "the votes were computed for another fine-tune.")

    def shape(self, name: str) -> tuple[int, ...]:
        votes = self.votes
        return votes.shape(name) if isinstance(votes, _LazyTensors) else tuple(votes[name].shape)

    def signs(self, name: str) -> torch.Tensor:
        return torch.sign(self.votes[name])

    def has_evidence(self, name: str) -> torch.Tensor:
        ev = self.evidence.get(name)
        return torch.ones(self.votes[name].shape, dtype=torch.bool) if ev is None else ev

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write atomically (a hidden temporary file moved into place) and deterministically: identical votes and
        metadata give identical bytes. ``overwrite`` replaces a previous votes file, nothing else."""
        tensors = {name: v.contiguous() for name, v in self.votes.items()}
        for name, ev in self.evidence.items():
            if ev.dim() >= 2 and bool((ev == ev[..., :1]).all()):
                tensors[ROWS + name] = ev.reshape(ev.shape[0], -1)[:, 0].to(torch.uint8).contiguous()
            else:
                tensors[BITS + name] = torch.from_numpy(np.packbits(ev.flatten().numpy()))
        return atomic_file(path, lambda temporary: write_file(temporary, tensors, self.metadata),
                           overwrite=overwrite, recognise=is_votes_file, where="votes file")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "VotesFile":
        """Open a votes file: metadata and layout are read and checked now; each tensor is read when asked for
        (a streaming merge holds one tensor's votes at a time, not the whole file)."""
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
        reader = _Reader(handle, path, entries)
        votes = _LazyTensors(names, lambda name: reader.get(name), {n: shapes[n] for n in names})
        evidence = _LazyTensors(list(evidence_keys), lambda name: _decode_evidence(
            reader.get(evidence_keys[name]), evidence_keys[name], shapes[name]), {n: shapes[n] for n in evidence_keys})
        return cls(votes=votes, metadata=metadata, evidence=evidence)

    def check_target(self, shapes: dict[str, tuple[int, ...]], *, target: str, commit_hash: Optional[str],
                     source: str = "votes file") -> None:
        """Refuse votes computed for another target or another parameter set."""
        recorded = self.metadata.get("target_revision") or None
        if commit_hash and recorded and recorded != commit_hash:
            raise VotesFileError(f"{source}: computed for revision {recorded} of {self.metadata['target']}, "
                                 f"but the target {target} resolves to {commit_hash}.")
        extra = sorted(set(self.votes) - set(shapes))
        missing = sorted(set(shapes) - set(self.votes))
        if extra or missing:
            raise VotesFileError(f"{source}: computed for another parameter set (target "
                                 f"{self.metadata['target']}): " + "; ".join(
                                     x for x in (f"not in the target: {extra[:3]}" if extra else "",
                                                 f"missing votes for: {missing[:3]}" if missing else "") if x))
        for name, shape in shapes.items():
            stored = self.shape(name)
            if stored != tuple(shape):
                raise VotesFileError(f"{source}: tensor {name!r} has shape {list(stored)} but the "
                                     f"target {target} has {list(shape)}.")
        n = self.n_samples
        limit = n if self.metadata["aggregation"] == "majority" else 1
        for name, v in self.votes.items():  # one tensor at a time (a file opened with load() holds none)
            # max and min in the vote dtype (abs() of the smallest int8 value overflows to itself), no int64 copy
            if v.numel() and max(int(v.max()), -int(v.min())) > limit:
                raise VotesFileError(f"{source}: tensor {name!r} has |vote| > {limit} (N={n}): corrupt file.")

    def statistics(self, name: str, votes: Optional[torch.Tensor] = None) -> dict:
        """Shares of positive / negative / tied / no-evidence votes and the mean |v|/N (memoized: an α sweep asks
        for the same tensor's statistics at every α). int8 votes take one pass: a 256-bin histogram. ``votes``:
        this tensor's votes when the caller has already read them."""
        cache = self.__dict__.setdefault("_statistics", {})
        if name not in cache:
            v = self.votes[name] if votes is None else votes
            numel = max(v.numel(), 1)
            ev = self.evidence.get(name)
            if v.dtype == torch.int8:
                counts = torch.bincount(v.reshape(-1).view(torch.uint8), minlength=256)
                positive, negative = int(counts[1:128].sum()), int(counts[128:].sum())
                abs_sum = int((counts * _INT8_ABS).sum())
            else:
                positive, negative = int(torch.count_nonzero(v > 0)), int(torch.count_nonzero(v < 0))
                abs_sum = int(v.abs().sum(dtype=torch.int64))
            zeros = v.numel() - positive - negative
            ties = zeros if ev is None else int(torch.count_nonzero((v == 0) & ev))
            cache[name] = {"positive": positive / numel, "negative": negative / numel, "tie": ties / numel,
                           "no_evidence": 0.0 if ev is None else (ev.numel() - int(torch.count_nonzero(ev))) / numel,
                           "mean_abs_margin": abs_sum / numel / max(self.n_samples, 1)}
        return cache[name]

    def overall_statistics(self) -> dict:
        """Shares of positive / negative / tied / no-evidence votes over every coordinate of every tensor."""
        numel = {name: v.numel() for name, v in self.votes.items()}
        total = max(sum(numel.values()), 1)
        stats = {name: self.statistics(name) for name in numel}
        return {key: sum(stats[n][key] * numel[n] for n in stats) / total
                for key in ("positive", "negative", "tie", "no_evidence")}


#: |value| of each int8 bit pattern read as uint8 (the bins of the one-pass vote histogram)
_INT8_ABS = torch.arange(256, dtype=torch.int64).where(torch.arange(256) < 128, 256 - torch.arange(256))


_INTEGER_DTYPES = ("I8", "I16", "I32", "I64")


class _Reader:
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


class _LazyTensors(Mapping):
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


def _decode_evidence(value: torch.Tensor, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The full-shape bool evidence of a tensor from its stored form (one flag per row, or packed bits)."""
    if key.startswith(ROWS):
        return value.bool().reshape(-1, *([1] * (len(shape) - 1))).expand(shape).clone()
    bits = np.unpackbits(value.reshape(-1).numpy())
    return torch.from_numpy(bits[: math.prod(shape)].astype(bool)).reshape(shape)
