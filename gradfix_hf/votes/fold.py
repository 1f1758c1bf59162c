"""Folding per-sample gradients into votes: the noise rule, evidence, and integer/float accumulation.

Shared by the reference engine (one sample at a time) and the batched engine (a micro-batch at a time).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..errors import NonFiniteError
from .votes_file import vote_dtype

AGGREGATIONS = ("majority", "mean")
# "sum" is for several processes (votes.distributed): the float Σ_n g_n per parameter instead of votes
MODES = AGGREGATIONS + ("sum",)
NOISE_FLOOR = 2.0 ** -20  # |g| ≤ NOISE_FLOOR · max|g| (per sample, per tensor) is rounding noise: no vote


def noise_limits(flat: torch.Tensor) -> torch.Tensor:
    """[c, 1]: NOISE_FLOOR × each sample's largest |g| in the tensor (``flat`` is [c, numel]). A NaN or inf
    anywhere in a sample's gradient propagates into its limit. (max(amax, −amin) is two vectorised reductions
    without a temporary: several times faster on CPU than ``abs().amax()`` or an inf-norm.)"""
    return (NOISE_FLOOR * torch.maximum(flat.amax(1), flat.amin(1).neg())).unsqueeze(1)


def drop_noise(per_sample: torch.Tensor) -> torch.Tensor:
    """Zero the entries of per-sample gradients [c, ...] that are rounding noise of their sample's tensor.

    A gradient that is exactly 0 in exact arithmetic (e.g. an attention key bias, to which softmax is
    invariant) comes out of float32 as ~1e-14 noise of either sign; voting on it would be a coin flip, and
    two correct engines would disagree on it. Relative to the sample's largest |g| in the tensor, such noise
    sits far below 2^-20, while a real gradient component of that size cannot move the loss measurably.
    """
    flat = per_sample.reshape(per_sample.shape[0], -1)
    return _without_noise(flat, noise_limits(flat)).view_as(per_sample)


def _without_noise(flat: torch.Tensor, limit: torch.Tensor) -> torch.Tensor:
    """``flat`` [c, numel] with the entries at or below each sample's noise ``limit`` [c, 1] set to 0."""
    return torch.where(flat.abs() <= limit, 0.0, flat)


class Scratch:
    """Named buffers reused from fold to fold. On CPU a large tensor written into fresh memory pays a page fault
    per 4 KiB page (a 64 MB per-sample gradient is written about 3× slower than into memory already touched), so
    the per-sample gradients and the comparison masks of a fold go into buffers kept for the next one."""

    def __init__(self):
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, slot: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        numel = math.prod(shape)
        buffer = self._buffers.get(slot)
        if buffer is None or buffer.numel() < numel or buffer.dtype != dtype or buffer.device != device:
            self._buffers.pop(slot, None)  # freed before the larger one is allocated
            buffer = self._buffers[slot] = torch.empty(max(numel, 1), dtype=dtype, device=device)
        return buffer[:numel].view(*shape)


def voted_parameters(model: nn.Module, parameter_names: Sequence[str], aggregation: str) -> dict[str, nn.Parameter]:
    """Check the request, put the model in eval mode with every parameter frozen, return the voted ones."""
    if aggregation not in MODES:
        raise ValueError(f"aggregation must be one of {MODES}, got {aggregation!r}")
    model.eval()
    params = dict(model.named_parameters())
    missing = [n for n in parameter_names if n not in params]
    if missing:
        raise KeyError(f"parameters not in the model: {missing[:3]}")
    for p in model.parameters():
        p.requires_grad_(False)
    return {n: params[n] for n in parameter_names}


class VoteFold:
    """Integer votes (or float sums for ``mean``/``sum``) and evidence, updated from per-sample gradients.

    Both engines fold through this class, so the noise rule, the evidence and the vote arithmetic are
    defined once. Votes accumulate in ``vote_dtype(N)`` (exact: a partial sum never exceeds N).
    """

    def __init__(self, params: dict[str, nn.Parameter], n_samples: int, aggregation: str):
        self.dtype = vote_dtype(n_samples)
        self.aggregation = aggregation
        self.mean = aggregation in ("mean", "sum")
        # partial sums never exceed the samples folded so far, so vote_dtype(N) holds them exactly (1 byte
        # per parameter for N ≤ 127); per-fold sign sums are formed in int32 and then narrowed
        self.votes = {n: torch.zeros(p.shape, dtype=self.dtype, device=p.device) for n, p in params.items()}
        self.sums = {n: torch.zeros(p.shape, device=p.device) for n, p in params.items()} if self.mean else None
        self.evidence = {n: torch.zeros(p.shape, dtype=torch.bool, device=p.device) for n, p in params.items()}
        self.scratch = Scratch()

    def dense(self, name: str, per_sample: torch.Tensor, where: str = "") -> None:
        """``per_sample`` is [c, *shape]: c samples' gradients of parameter ``name``.

        Majority votes never form the signs as a tensor: per coordinate they count the samples whose
        gradient is above the noise limit and those below minus it (two comparisons, summed over the samples
        in ``vote_dtype``), so the c × numel data are streamed four times (max, min, above, below) into
        reused buffers.
        """
        count = per_sample.shape[0]
        flat = per_sample.reshape(count, -1)
        limit = noise_limits(flat)
        if not bool(torch.isfinite(limit).all()):
            raise NonFiniteError(f"{where + ': ' if where else ''}gradient of {name!r} has NaN/inf.")
        evidence = self.evidence[name].view(-1)
        if self.mean:
            kept = _without_noise(flat, limit)
            evidence |= (kept != 0).any(0)
            self.sums[name].view(-1).add_(kept.sum(0))
            return
        take = self.scratch.take
        above = torch.gt(flat, limit, out=take("above", flat.shape, torch.bool, flat.device))
        below = torch.lt(flat, limit.neg(), out=take("below", flat.shape, torch.bool, flat.device))
        # bool storage read as 0/1 bytes: summing int8 is several times faster than summing bool
        above, below = above.view(torch.int8), below.view(torch.int8)
        if count == 1:  # one sample: the masks are its votes
            up, down = above[0], below[0]
        else:
            up = torch.sum(above, 0, dtype=self.dtype, out=take("up", flat.shape[1:], self.dtype, flat.device))
            down = torch.sum(below, 0, dtype=self.dtype, out=take("down", flat.shape[1:], self.dtype, flat.device))
        evidence.logical_or_(up).logical_or_(down)
        self.votes[name].view(-1).sub_(up).add_(down)

    def rows(self, name: str, row_ids: torch.Tensor, per_sample_rows: torch.Tensor, samples: torch.Tensor) -> None:
        """Sparse update: ``per_sample_rows[k]`` is sample ``samples[k]``'s gradient of row ``row_ids[k]``."""
        if not torch.isfinite(per_sample_rows).all():
            raise NonFiniteError(f"gradient of {name!r} has NaN/inf.")
        magnitude = per_sample_rows.abs().flatten(1).amax(1)
        scale = torch.zeros(int(samples.max()) + 1 if len(samples) else 0, device=magnitude.device)
        scale = scale.scatter_reduce_(0, samples, magnitude, "amax")
        limit = (NOISE_FLOOR * scale[samples]).view(-1, *([1] * (per_sample_rows.dim() - 1)))
        per_sample_rows = torch.where(per_sample_rows.abs() <= limit, torch.zeros_like(per_sample_rows), per_sample_rows)
        unique, inverse = torch.unique(row_ids, return_inverse=True)
        width = per_sample_rows.shape[1:]
        device = per_sample_rows.device
        touched = torch.zeros((len(unique), *width), dtype=torch.int32, device=device)
        touched.index_add_(0, inverse, (per_sample_rows != 0).int())
        self.evidence[name][unique] |= touched > 0
        if self.mean:
            self.sums[name].index_add_(0, row_ids, per_sample_rows)
        else:
            signs = torch.zeros((len(unique), *width), dtype=torch.int32, device=device)
            signs.index_add_(0, inverse, torch.sign(per_sample_rows).int())
            self.votes[name][unique] -= signs.to(self.dtype)

    def result(self) -> tuple[dict, dict]:
        if self.aggregation == "sum":  # one process's shard of a distributed "mean" vote
            votes = {n: s.cpu() for n, s in self.sums.items()}
        elif self.mean:
            votes = {n: torch.sign(-s).to(self.dtype).cpu() for n, s in self.sums.items()}
        else:
            votes = {n: v.to(self.dtype).cpu() for n, v in self.votes.items()}
        partial = {n: ev.cpu() for n, ev in self.evidence.items() if not bool(ev.all())}
        return votes, partial
