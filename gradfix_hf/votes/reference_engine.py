"""The exact reference vote engine: one sample at a time, eval mode, fp32.

For each sample n the gradient g_n = ∇ℓ(θ_B; x_n, y_n) is computed and immediately folded into integer
votes v += sign(−g_n): at most one gradient exists at any time. Coordinates that no sample's gradient
touched are recorded as "no evidence" (an embedding row of a token absent from the samples).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..errors import DataError, NonFiniteError
from .fold import AGGREGATIONS, MODES, NOISE_FLOOR, VoteFold, drop_noise, voted_parameters

__all__ = ["AGGREGATIONS", "MODES", "NOISE_FLOOR", "compute_votes", "drop_noise", "fold_one_at_a_time"]


def compute_votes(model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor],
                  examples: Sequence[dict], parameter_names: Sequence[str], *, aggregation: str = "majority",
                  progress: bool = True, description: str = "votes") -> tuple[dict, dict]:
    """Return ``(votes, evidence)``: integer votes per parameter and, where partial, a bool evidence mask.

    ``aggregation="majority"`` gives v = Σ_n sign(−g_n) (GradFix); ``"mean"`` gives sign(−Σ_n g_n);
    ``"sum"`` gives the fp32 gradient sums Σ_n g_n themselves (one process's shard of a "mean" vote).
    """
    params = voted_parameters(model, parameter_names, aggregation)
    fold = VoteFold(params, len(examples), aggregation)
    fold_one_at_a_time(model, loss_fn, examples, params, fold, progress=progress, description=description)
    return fold.result()


def fold_one_at_a_time(model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor],
                       examples: Sequence[dict], params: dict[str, torch.nn.Parameter], fold: VoteFold, *,
                       progress: bool = True, description: str = "votes") -> None:
    """The exact loop: per sample, the gradient of ``params`` (only) folded into ``fold`` at once."""
    wanted = list(params.values())
    for p in wanted:
        p.requires_grad_(True)
    try:
        for index, example in enumerate(tqdm(examples, desc=description, disable=not progress, unit="sample")):
            loss = loss_fn(model, example)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                got = f"shape {list(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
                raise DataError(f"sample {index}: the loss must be a scalar tensor, got {got}.")
            if not torch.isfinite(loss):
                raise NonFiniteError(f"sample {index}: the loss on the target is {float(loss.detach())} (NaN/inf).")
            grads = torch.autograd.grad(loss, wanted, allow_unused=True)
            for name, grad in zip(params, grads):
                if grad is not None:
                    fold.dense(name, grad.detach().float().unsqueeze(0), where=f"sample {index}")
    finally:
        for p in wanted:
            p.requires_grad_(False)
