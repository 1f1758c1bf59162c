"""TIES merging (Yadav et al., 2023) in the two variants GradFix experiments name.

* ``paper`` (the GradFix authors' code): trim **per tensor**, keeping the top ⌈density·numel⌉ magnitudes
  (every value tied with the threshold is kept); elect each coordinate's sign by **count** of positive vs
  negative trimmed values (a tie elects +1); disjoint mean of the values that agree with the elected sign.
* ``original`` (the TIES paper): trim **globally**, keeping the top ⌈density·P⌉ magnitudes of each whole task
  vector (P = all transported coordinates; threshold found exactly in two streaming passes, see
  :class:`GlobalTrim`); elect the sign of the **sum** of the trimmed values (a zero sum elects nothing);
  disjoint mean as above.

Task weights w_t multiply the trimmed values before the election of ``original`` and before the mean of both
(the count election of ``paper`` is unweighted); the mean divides by the number of agreeing tasks.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch

from .base import MERGE_PARAMETERS, MergeMethod, TensorInputs
from .registry import register

_HIGH_BINS, _LOW_BINS = 1 << 15, 1 << 16  # |x| as float32 bits: sign bit 0, so the high half is < 2**15


def trim_per_tensor(vector: torch.Tensor, density: float) -> torch.Tensor:
    """Zero all but the top ⌈density·numel⌉ magnitudes of ``vector`` (values tied with the threshold stay)."""
    if density >= 1:
        return vector
    flat = vector.abs().flatten()
    k = max(1, math.ceil(flat.numel() * density))
    threshold = torch.kthvalue(flat, flat.numel() - k + 1).values
    return torch.where(vector.abs() >= threshold, vector, torch.zeros_like(vector))


def trim_at(vector: torch.Tensor, threshold: float) -> torch.Tensor:
    return torch.where(vector.abs() >= threshold, vector, torch.zeros_like(vector))


def elect_signs(trimmed: torch.Tensor, weighted: torch.Tensor, variant: str) -> torch.Tensor:
    """The elected sign per coordinate (+1, −1, or 0 where no task has a value)."""
    if variant == "paper":
        positive, negative = (trimmed > 0).sum(0), (trimmed < 0).sum(0)
        elected = torch.zeros_like(trimmed[0])
        elected[(positive >= negative) & (positive + negative > 0)] = 1.0
        elected[negative > positive] = -1.0
        return elected
    return torch.sign(weighted.sum(0))


def ties_merge(vectors: list[torch.Tensor], weights: list[float], *, variant: str = "paper", density: float = 0.2,
               thresholds: Optional[list[float]] = None) -> torch.Tensor:
    """Trim, elect, disjoint mean (see the module docstring)."""
    if variant == "original":
        if density < 1 and thresholds is None:
            raise ValueError("TIES 'original' trims globally: the engine must compute the thresholds first")
        trimmed = torch.stack([v if density >= 1 else trim_at(v, th) for v, th in
                               zip(vectors, thresholds or [0.0] * len(vectors))])
    else:
        trimmed = torch.stack([trim_per_tensor(v, density) for v in vectors])
    weighted = trimmed * torch.tensor(weights, dtype=trimmed.dtype).view(-1, *([1] * (trimmed.dim() - 1)))
    elected = elect_signs(trimmed, weighted, variant)
    agree = (torch.sign(trimmed) == elected) & (trimmed != 0)
    total = torch.where(agree, weighted, torch.zeros_like(weighted)).sum(0)
    return total / agree.sum(0).clamp_min(1).to(total.dtype)


class GlobalTrim:
    """The exact k-th largest magnitude of each whole task vector, from two streaming passes.

    Radix select on float32 bit patterns (which order like the magnitudes they encode): pass 1 histograms
    the high 16 bits of every |x| and finds the bucket holding the k-th largest; pass 2 histograms the low 16
    bits inside that bucket. Memory: two histograms per task vector, whatever the model size.
    """

    def __init__(self, n_tasks: int, density: float):
        self.density = density
        self.high = [torch.zeros(_HIGH_BINS, dtype=torch.int64) for _ in range(n_tasks)]
        self.low = [torch.zeros(_LOW_BINS, dtype=torch.int64) for _ in range(n_tasks)]
        self.bucket: list[int] = []
        self.rank: list[int] = []

    @staticmethod
    def _bits(vector: torch.Tensor) -> torch.Tensor:
        return vector.detach().abs().to(torch.float32).flatten().view(torch.int32)

    def first_pass(self, task: int, vector: torch.Tensor) -> None:
        self.high[task] += torch.bincount(self._bits(vector) >> 16, minlength=_HIGH_BINS)

    def finish_first_pass(self) -> None:
        for counts in self.high:
            total = int(counts.sum())
            k = max(1, math.ceil(total * self.density))
            from_top = counts.flip(0).cumsum(0)  # from_top[j] = count of values in buckets >= HIGH_BINS-1-j
            j = int(torch.searchsorted(from_top, torch.tensor(k)))
            bucket = _HIGH_BINS - 1 - j
            above = int(from_top[j - 1]) if j > 0 else 0
            self.bucket.append(bucket)
            self.rank.append(k - above)  # the wanted value is the rank-th largest inside the bucket

    def second_pass(self, task: int, vector: torch.Tensor) -> None:
        bits = self._bits(vector)
        inside = bits[(bits >> 16) == self.bucket[task]]
        if inside.numel():
            self.low[task] += torch.bincount(inside & 0xFFFF, minlength=_LOW_BINS)

    def thresholds(self) -> list[float]:
        out = []
        for task, counts in enumerate(self.low):
            from_top = counts.flip(0).cumsum(0)
            j = int(torch.searchsorted(from_top, torch.tensor(self.rank[task])))
            bits = (self.bucket[task] << 16) | (_LOW_BINS - 1 - j)
            out.append(float(torch.tensor([bits], dtype=torch.int32).view(torch.float32)))
        return out


class Ties(MergeMethod):
    def combine(self, vectors: list[torch.Tensor], inputs: TensorInputs, params: Mapping[str, Any]) -> torch.Tensor:
        return ties_merge(vectors, inputs.weights, variant=params["variant"], density=params["density"],
                          thresholds=inputs.thresholds)

    def needs_global_threshold(self, params: Mapping[str, Any]) -> bool:
        return params["variant"] == "original" and params["density"] < 1


TIES = register(Ties(
    name="ties", pretty_name="TIES",
    description="TIES merging of the unmasked task vectors (trim, elect sign, disjoint mean); variant 'paper' or "
                "'original'.",
    parameters=tuple(p for p in MERGE_PARAMETERS if p.name in ("variant", "density")),
))
