"""Keep-masks for τ_A: which coordinates of the source task vector survive on the target.

* ``gradfix``: ŝ = sign(v), v = Σ_n sign(−g_n) (majority vote); m = 1{sign(τ_A) = ŝ}.
* ``mean``: the same with ŝ = sign(−Σ_n g_n) (votes computed with ``aggregation: mean``).
* ``oracle``: ŝ = sign(τ_B) from a real target fine-tune (an upper bound for experiments).
* ``naive``: keep everything (θ_B + α·τ_A), the baseline.

A tie (ŝ = 0) or τ_A = 0 keeps nothing. Coordinates with no evidence (no sample's gradient touched them)
have ŝ = 0 too; the ``no_evidence`` policy drops them (the paper) or keeps τ_A there (``keep``).
"""
from __future__ import annotations

from typing import Optional

import torch


def sign_agreement_mask(tau: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """m = 1{sign(τ) = ŝ}, with ŝ = 0 or τ = 0 giving 0."""
    s = torch.sign(signs).to(torch.int8)
    return (torch.sign(tau).to(torch.int8) == s) & (s != 0)


def keep_mask(kind: str, tau: torch.Tensor, *, signs: Optional[torch.Tensor] = None,
              evidence: Optional[torch.Tensor] = None, no_evidence: str = "drop") -> torch.Tensor:
    """The boolean keep-mask of one tensor for mask ``kind``."""
    if kind == "naive":
        return tau != 0
    if signs is None:
        raise ValueError(f"mask {kind!r} needs signs")
    mask = sign_agreement_mask(tau, signs)
    if kind in ("gradfix", "mean") and evidence is not None and no_evidence == "keep":
        mask |= (~evidence) & (tau != 0)
    return mask


def transported(target: torch.Tensor, tau: torch.Tensor, mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """θ_B + α·(m ⊙ τ_A), in fp32."""
    return target + alpha * torch.where(mask, tau, torch.zeros_like(tau))
