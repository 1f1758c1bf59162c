"""The exact reference vote engine: one sample at a time, eval mode, fp32.

For each sample n the gradient g_n = ∇ℓ(θ_B; x_n, y_n) is computed and immediately folded into integer
votes v += sign(−g_n): at most one gradient exists at any time. Coordinates that no sample's gradient
touched are recorded as "no evidence" (an embedding row of a token absent from the samples).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..errors import DataError, NonFiniteError
from .votes_file import vote_dtype

AGGREGATIONS = ("majority", "mean")
# "sum" is for several processes (votes.distributed): the float Σ_n g_n per parameter instead of votes
MODES = AGGREGATIONS + ("sum",)
NOISE_FLOOR = 2.0 ** -20  # |g| ≤ NOISE_FLOOR · max|g| (per sample, per tensor) is rounding noise: no vote


def drop_noise(per_sample: torch.Tensor) -> torch.Tensor:
    """Zero the entries of per-sample gradients [c, ...] that are rounding noise of their sample's tensor.

    A gradient that is exactly 0 in exact arithmetic (e.g. an attention key bias, to which softmax is
    invariant) comes out of float32 as ~1e-14 noise of either sign; voting on it would be a coin flip, and
    two correct engines would disagree on it. Relative to the sample's largest |g| in the tensor, such noise
    sits far below 2^-20, while a real gradient component of that size cannot move the loss measurably.
    """
    scale = per_sample.abs().flatten(1).amax(1).view(-1, *([1] * (per_sample.dim() - 1)))
    return torch.where(per_sample.abs() <= NOISE_FLOOR * scale, torch.zeros_like(per_sample), per_sample)


def compute_votes(model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor],
                  examples: Sequence[dict], parameter_names: Sequence[str], *, aggregation: str = "majority",
                  progress: bool = True, description: str = "votes") -> tuple[dict, dict]:
    """Return ``(votes, evidence)``: integer votes per parameter and, where partial, a bool evidence mask.

    ``aggregation="majority"`` gives v = Σ_n sign(−g_n) (GradFix); ``"mean"`` gives sign(−Σ_n g_n);
    ``"sum"`` gives the fp32 gradient sums Σ_n g_n themselves (one process's shard of a "mean" vote).
    """
    if aggregation not in MODES:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    model.eval()
    params = dict(model.named_parameters())
    missing = [n for n in parameter_names if n not in params]
    if missing:
        raise KeyError(f"parameters not in the model: {missing[:3]}")
    wanted = [params[n] for n in parameter_names]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in wanted:
        p.requires_grad_(True)
    dtype = vote_dtype(len(examples))
    votes = {n: torch.zeros(p.shape, dtype=dtype) for n, p in zip(parameter_names, wanted)}
    evidence = {n: torch.zeros(p.shape, dtype=torch.bool) for n, p in zip(parameter_names, wanted)}
    sums: Optional[dict] = {n: torch.zeros(p.shape) for n, p in zip(parameter_names, wanted)} \
        if aggregation in ("mean", "sum") else None
    for index, example in enumerate(tqdm(examples, desc=description, disable=not progress, unit="sample")):
        loss = loss_fn(model, example)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            got = f"shape {list(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise DataError(f"sample {index}: the loss must be a scalar tensor, got {got}.")
        if not torch.isfinite(loss):
            raise NonFiniteError(f"sample {index}: the loss on the target is {float(loss.detach())} (NaN/inf).")
        grads = torch.autograd.grad(loss, wanted, allow_unused=True)
        for name, grad in zip(parameter_names, grads):
            if grad is None:
                continue
            grad = grad.detach().float().cpu()
            if not torch.isfinite(grad).all():
                raise NonFiniteError(f"sample {index}: gradient of {name!r} has NaN/inf.")
            grad = drop_noise(grad.unsqueeze(0))[0]
            evidence[name] |= grad != 0
            if sums is not None:
                sums[name] += grad
            else:
                votes[name] -= torch.sign(grad).to(dtype)
    if aggregation == "sum":
        votes = sums
    elif sums is not None:
        votes = {n: torch.sign(-s).to(dtype) for n, s in sums.items()}
    for p in wanted:
        p.requires_grad_(False)
    partial = {n: ev for n, ev in evidence.items() if not bool(ev.all())}
    return votes, partial
