"""The votes file between the two stages: integer votes per target parameter, evidence, and metadata.

Layout (safetensors): ``<param name>`` → int8/int16 vote v = Σ_n sign(−g_n) (for ``aggregation: mean`` the
single sign of −Σ_n g_n); ``evidence_rows/<name>`` → uint8 per row, or ``evidence_bits/<name>`` → packed
bits, only for tensors where some coordinate got no gradient from any sample. Metadata records N, the
objective, the target and its revision, a data fingerprint and a fingerprint of the voted parameter set.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

import torch

from ..errors import VotesFileError
from .destinations import atomic_file
from .safetensors_format import write_file
from .sharded_votes import ShardInfo, read_sharded_votes, sharded_index_path
from .votes_format import is_votes_file, read_votes_file, stored_tensors


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
    #: set on this process's part of a sharded vote (its rows of every tensor), which is saved with
    #: :func:`~gradfix_hf.storage.sharded_votes.save_sharded_votes` by every process together
    shard: Optional[ShardInfo] = None

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
        shape = getattr(self.votes, "shape", None)  # a file opened with load() knows its shapes without reading
        return shape(name) if callable(shape) else tuple(self.votes[name].shape)

    def signs(self, name: str) -> torch.Tensor:
        return torch.sign(self.votes[name])

    def has_evidence(self, name: str) -> torch.Tensor:
        ev = self.evidence.get(name)
        return torch.ones(self.votes[name].shape, dtype=torch.bool) if ev is None else ev

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write atomically (a hidden temporary file moved into place) and deterministically: identical votes and
        metadata give identical bytes. ``overwrite`` replaces a previous votes file, nothing else."""
        if self.shard is not None:
            raise VotesFileError("this is one process's shard of a sharded vote: every process saves it together "
                                 "(gradfix_hf.storage.save_sharded_votes).")
        tensors = stored_tensors(self.votes, self.evidence)
        return atomic_file(path, lambda temporary: write_file(temporary, tensors, self.metadata),
                           overwrite=overwrite, recognise=is_votes_file, where="votes file")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "VotesFile":
        """Open a votes file, or a sharded one (its ``.index.json``, or the path it was written to): metadata and
        layout of every file are read and checked now; each tensor is read when asked for (a streaming merge holds
        one tensor's votes at a time, not the whole file)."""
        index = sharded_index_path(Path(path))
        if index is not None:
            metadata, votes, evidence = read_sharded_votes(index)
        else:
            metadata, votes, evidence = read_votes_file(Path(path))
            if "shard_count" in metadata:
                raise VotesFileError(f"{path}: is shard {int(metadata.get('shard_index', 0)) + 1} of "
                                     f"{metadata['shard_count']} of a sharded votes file (its rows only): read the "
                                     "file's index (….safetensors.index.json) instead.")
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
