"""Folding per-sample gradients into votes: the noise rule, evidence, and integer/float accumulation.

Shared by the reference engine (one sample at a time) and the batched engine (a micro-batch at a time).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from ..errors import NonFiniteError
from ..storage import vote_dtype

AGGREGATIONS = ("majority", "mean")
# "sum" is for several processes (votes.distributed): the float Σ_n g_n per parameter instead of votes
MODES = AGGREGATIONS + ("sum",)
NOISE_FLOOR = 2.0 ** -20  # |g| ≤ NOISE_FLOOR · max|g| (per sample, per tensor) is rounding noise: no vote
ROW_CALL_MIN_ELEMENTS = 1 << 16  # the fold drops a tensor's noise per sample row from this size up
FOLD_PIECE = 1 << 20  # values folded per pass (c samples × columns): the sign buffers stay in cache


def noise_limits(flat: torch.Tensor) -> torch.Tensor:
    """[c, 1]: NOISE_FLOOR × each sample's largest |g| in the tensor (``flat`` is [c, numel]). A NaN or inf
    anywhere in a sample's gradient propagates into its limit. (max(amax, −amin) is two vectorised reductions
    without a temporary: several times faster on CPU than ``abs().amax()`` or an inf-norm.)"""
    return limits_from_extremes(flat.amax(1), flat.amin(1))


def limits_from_extremes(largest: torch.Tensor, smallest: torch.Tensor) -> torch.Tensor:
    """[c, 1] noise limits from each sample's largest and smallest gradient entry ([c] each), for a tensor
    whose per-sample gradients were reduced in parts."""
    return (NOISE_FLOOR * torch.maximum(largest, smallest.neg())).unsqueeze(1)


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
    the per-sample gradients and the sign buffers of a fold go into buffers kept for the next one."""

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
    defined once. A majority vote keeps two counters per coordinate in ``vote_dtype(N)``: Σ_n sign(g_n) over
    the samples above the noise limit (``sign_sums``; the vote is its negative) and how many samples those
    are (``voters``; the evidence is voters > 0). Both are formed into votes and evidence once, at the end:
    two bytes per parameter for N ≤ 127, as votes plus a bool evidence would take, but each fold only adds
    int8 counts, where updating a bool evidence costs casts. A partial count never exceeds N: exact.
    """

    def __init__(self, params: dict[str, nn.Parameter], n_samples: int, aggregation: str):
        self.dtype = vote_dtype(n_samples)
        self.aggregation = aggregation
        self.mean = aggregation in ("mean", "sum")
        self.scratch = Scratch()
        self.allocate(params)

    def allocate(self, params: dict[str, nn.Parameter]) -> None:
        """The counters the folds add into: a full-size pair per voted tensor, on its device."""
        if self.mean:
            self.sums = {n: torch.zeros(p.shape, device=p.device) for n, p in params.items()}
            self.evidence = {n: torch.zeros(p.shape, dtype=torch.bool, device=p.device) for n, p in params.items()}
        else:
            self.sign_sums = {n: torch.zeros(p.shape, dtype=self.dtype, device=p.device) for n, p in params.items()}
            self.voters = {n: torch.zeros(p.shape, dtype=self.dtype, device=p.device) for n, p in params.items()}

    def flush(self, name: str) -> None:
        """Called when ``name``'s gradients of a micro-batch are all folded (a sharded fold reduces them here)."""

    def end_batch(self) -> None:
        """Called after each micro-batch's backward."""

    def shared_failure(self, message: Optional[str]) -> Optional[str]:
        """The first failure any process of the vote met in this micro-batch (a sharded fold asks them all, so
        that all raise together instead of some waiting in a collective); one process: its own."""
        return message

    def dense(self, name: str, per_sample: torch.Tensor, where: str = "") -> None:
        """``per_sample`` is [c, *shape]: c samples' gradients of parameter ``name``.

        Majority votes: each sample's row goes through ``hardshrink`` at its noise limit (0 at or below it,
        exactly the noise rule), then ``sign_``, then into int8, and the int8 signs and their absolute values
        are summed over the samples. Every pass is a vectorised kernel into a reused buffer; comparisons into
        bool masks would be scalar loops, slower on CPU. Tensors under ``ROW_CALL_MIN_ELEMENTS`` (biases,
        norms), and every tensor off the CPU, drop the noise with one masked product instead of a call per
        sample.
        """
        count = per_sample.shape[0]
        flat = per_sample.reshape(count, -1)
        limit = self.checked_limits(name, noise_limits(flat), where)
        self.dense_columns(name, flat, limit)

    def checked_limits(self, name: str, limit: torch.Tensor, where: str = "") -> torch.Tensor:
        """``limit`` ([c, 1], from :func:`noise_limits`), after checking that no gradient had a NaN or inf."""
        if not bool(torch.isfinite(limit).all()):
            raise NonFiniteError(f"{where + ': ' if where else ''}gradient of {name!r} has NaN/inf.")
        return limit

    def dense_columns(self, name: str, flat: torch.Tensor, limit: torch.Tensor, start: int = 0) -> None:
        """Fold ``flat`` [c, w]: c samples' gradients of the flattened parameter's entries [start, start + w),
        at the samples' noise limits [c, 1] (taken over the whole tensor). More than ``FOLD_PIECE`` values are
        folded in pieces of that size, so the sign buffers stay in cache."""
        count, width = flat.shape
        step = width if count * width <= FOLD_PIECE else max(1, FOLD_PIECE // count)
        # per-row hardshrink is for CPUs, where comparisons into bool masks are scalar loops; on a GPU they are
        # not, and per-row calls would add kernel launches and a host sync for the limits
        per_row = width >= ROW_CALL_MIN_ELEMENTS and flat.device.type == "cpu"
        row_limits = limit.view(-1).tolist() if per_row else None
        for lo in range(0, width, step):
            piece = flat[:, lo:lo + step]
            columns = slice(start + lo, start + lo + piece.shape[1])
            if self.mean:
                kept = _without_noise(piece, limit)
                self.evidence[name].view(-1)[columns].logical_or_((kept != 0).any(0))
                self.sums[name].view(-1)[columns].add_(kept.sum(0))
                continue
            take = self.scratch.take
            signs = take("signs", piece.shape, piece.dtype, piece.device)
            if per_row:
                for row, out, row_limit in zip(piece, signs, row_limits):
                    torch.hardshrink(row, row_limit, out=out)  # |g| ≤ limit → 0
            else:
                torch.mul(piece, piece.abs() > limit, out=signs)
            small = take("signs_int8", piece.shape, torch.int8, piece.device).copy_(signs.sign_())
            self._add_over_samples(self.sign_sums[name].view(-1)[columns], small)
            self._add_over_samples(self.voters[name].view(-1)[columns], small.abs_())

    def _add_over_samples(self, counter: torch.Tensor, values: torch.Tensor) -> None:
        """counter += Σ over the c samples of ``values`` [c, numel] (int8), summed in ``vote_dtype``."""
        if values.shape[0] == 1:
            counter.add_(values[0])
        else:
            counter.add_(torch.sum(values, 0, dtype=self.dtype,
                                   out=self.scratch.take("sum", values.shape[1:], self.dtype, values.device)))

    def rows(self, name: str, row_ids: torch.Tensor, per_sample_rows: torch.Tensor, samples: torch.Tensor) -> None:
        """Sparse update: ``per_sample_rows[k]`` is sample ``samples[k]``'s gradient of row ``row_ids[k]``."""
        if not torch.isfinite(per_sample_rows).all():
            raise NonFiniteError(f"gradient of {name!r} has NaN/inf.")
        magnitude = per_sample_rows.abs().flatten(1).amax(1)
        scale = torch.zeros(int(samples.max()) + 1 if len(samples) else 0, device=magnitude.device)
        scale = scale.scatter_reduce_(0, samples, magnitude, "amax")
        limit = (NOISE_FLOOR * scale[samples]).view(-1, *([1] * (per_sample_rows.dim() - 1)))
        if self.mean:
            per_sample_rows = _without_noise(per_sample_rows, limit)
            unique, inverse = torch.unique(row_ids, return_inverse=True)
            touched = torch.zeros((len(unique), *per_sample_rows.shape[1:]), dtype=torch.int32,
                                  device=per_sample_rows.device)
            touched.index_add_(0, inverse, (per_sample_rows != 0).int())
            self.evidence[name][unique] |= touched > 0
            self.sums[name].index_add_(0, row_ids, per_sample_rows)
            return
        signs = torch.sign(_without_noise(per_sample_rows, limit)).to(self.dtype)
        self.sign_sums[name].index_add_(0, row_ids, signs)  # duplicate row ids (other samples) accumulate
        self.voters[name].index_add_(0, row_ids, signs.abs_())

    def result(self) -> tuple[dict, dict]:
        """(votes, evidence of the tensors where some coordinate got no vote). Call once: a majority vote's
        counters become its votes in place (tensor by tensor, so all votes never exist twice)."""
        if self.mean:
            sign = (lambda s: s) if self.aggregation == "sum" else (lambda s: torch.sign(-s).to(self.dtype))
            votes = {n: sign(s).cpu() for n, s in self.sums.items()}  # "sum": one process's shard of a mean vote
            evidence = {n: ev.cpu() for n, ev in self.evidence.items()}
        else:
            votes, evidence = {}, {}
            for n in list(self.sign_sums):
                evidence[n] = self.voters.pop(n).ne(0).cpu()
                votes[n] = self.sign_sums.pop(n).neg_().cpu()
        partial = {n: ev for n, ev in evidence.items() if not bool(ev.all())}
        return votes, partial
