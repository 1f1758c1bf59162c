"""Mask variants: what survives of a task vector τ on the target, given the target's sign estimate ŝ.

Every variant maps (τ, ŝ, evidence) to a masked task vector of the same shape (fp32):

* ``gradfix``: τ ⊙ 1{sign(τ) = ŝ} with ŝ = sign(v), v = Σ_n sign(−g_n) (majority vote of the samples).
* ``mean``: the same with ŝ = sign(−Σ_n g_n) (votes computed with ``aggregation: mean``).
* ``oracle``: the same with ŝ = sign(τ_B) from a real target fine-tune (an upper bound for experiments).
* ``force``: |τ| ⊙ ŝ (sign forcing: every coordinate takes the target's sign; ŝ = 0 gives 0).
* ``random``: τ ⊙ r, r a random keep-mask with exactly as many kept coordinates as ``gradfix`` keeps in this
  tensor, drawn uniformly among the coordinates where τ ≠ 0 (seeded per tensor name: order-independent).
* ``random-sign``: |τ| ⊙ (random ±1) (what the authors' research code calls "random"; needs no votes).
* ``soft``: τ ⊙ max(0, tanh(ρ · ŝ · τ / rms(τ))), rms over the tensor: agreeing coordinates are kept with a
  weight that grows with their magnitude relative to the tensor's typical one (ρ = ``rho``, default 1),
  disagreeing or tied ones get 0. Scale-free, so one ρ fits every tensor.
* ``margin``: τ ⊙ 1{sign(τ) = ŝ} · |v|/N: agreeing coordinates weighted by the vote's margin (N samples), so
  a unanimous vote keeps τ whole and a 9-to-7 vote keeps an eighth of it.
* ``naive``: τ unchanged (θ_B + α·τ, the baseline).
* ``none``: nothing kept (θ_B itself: where a ``method: auto`` candidate that only fine-tunes θ_B starts).

A tie (ŝ = 0) or τ = 0 keeps nothing. ``min_margin`` q turns weak votes into ties before any variant sees them:
a coordinate keeps its vote only when |v|/N ≥ q (integer votes only). Coordinates with no evidence (no sample's
gradient touched them, e.g. embedding rows of absent tokens) have ŝ = 0 too, but they are not ties: the
``no_evidence`` policy drops them (``drop``, the paper), keeps τ there (``keep``) or keeps a fraction of τ
(``scale``: τ·``no_evidence_scale``).
"""
from __future__ import annotations

import hashlib
import math
from typing import Optional

import torch

MASK_VARIANTS = ("gradfix", "mean", "oracle", "force", "random", "random-sign", "soft", "margin", "naive", "none")
NO_EVIDENCE_POLICIES = ("drop", "keep", "scale")
#: the variants whose ŝ may be integer votes of N samples (what ``min_margin`` and ``margin`` need)
VOTE_COUNT_VARIANTS = ("gradfix", "force", "random", "soft", "margin")


def sign_source(variant: str) -> Optional[str]:
    """Where a variant's ŝ comes from: ``votes`` (majority), ``mean-votes``, ``oracle`` (sign of τ_B) or None."""
    if variant in ("naive", "random-sign", "none"):
        return None
    if variant == "oracle":
        return "oracle"
    return "mean-votes" if variant == "mean" else "votes"


def _require_vote_counts(signs: torch.Tensor, n_votes: Optional[int], what: str, name: str) -> int:
    """N, checking that ``signs`` are integer votes of N samples (what vote margins are made of)."""
    if signs.is_floating_point() or not n_votes:
        raise ValueError(f"{what} needs integer votes and their sample count (tensor {name!r}).")
    return n_votes


def margin_filtered(signs: torch.Tensor, n_votes: Optional[int], min_margin: float, name: str = "") -> torch.Tensor:
    """Integer votes with |v|/N < q set to 0 (a tie): only a clear majority keeps its sign."""
    n_votes = _require_vote_counts(signs, n_votes, "min_margin", name)
    need = max(1, math.ceil(min_margin * n_votes - 1e-9))
    return torch.where(signs.abs() >= need, signs, torch.zeros((), dtype=signs.dtype))


def sign_agreement_mask(tau: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """m = 1{sign(τ) = ŝ}, with ŝ = 0 or τ = 0 giving 0: the product τ·v is > 0 exactly then (integer votes have
    |v| ≥ 1 where non-zero, so the product never underflows; float signs, e.g. τ_B, are reduced to ±1 first)."""
    s = torch.sign(signs) if signs.is_floating_point() else signs
    return (tau * s) > 0


def keep_mask(kind: str, tau: torch.Tensor, *, signs: Optional[torch.Tensor] = None,
              evidence: Optional[torch.Tensor] = None, no_evidence: str = "drop",
              agree: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The boolean keep-mask of the sign-agreement variants (and ``naive``: every non-zero coordinate).
    ``agree``: :func:`sign_agreement_mask` of (τ, ŝ) when the caller already has it (it is not modified)."""
    if kind == "naive":
        return tau != 0
    if kind == "none":
        return torch.zeros(tau.shape, dtype=torch.bool)
    if signs is None:
        raise ValueError(f"mask {kind!r} needs signs")
    mask = sign_agreement_mask(tau, signs) if agree is None else agree
    if evidence is not None and no_evidence != "drop":
        return mask | ((~evidence) & (tau != 0))
    return mask


def tensor_generator(seed: int, name: str) -> torch.Generator:
    """A generator seeded by (seed, tensor name): the same draw whatever order tensors are processed in."""
    digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def masked_task_vector(variant: str, tau: torch.Tensor, signs: Optional[torch.Tensor] = None,
                       evidence: Optional[torch.Tensor] = None, *, no_evidence: str = "drop",
                       no_evidence_scale: float = 0.5, min_margin: float = 0.0, n_votes: Optional[int] = None,
                       seed: int = 0, rho: float = 1.0, name: str = "",
                       agree: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The masked τ of one tensor for ``variant`` (see the module docstring for each formula). ``n_votes``: the N
    behind integer votes (``margin`` and ``min_margin`` need it)."""
    if variant == "naive":
        return tau.clone()
    if variant == "none":
        return torch.zeros_like(tau)
    if variant == "random-sign":
        flips = torch.randint(0, 2, tau.shape, generator=tensor_generator(seed, name)).to(tau.dtype) * 2 - 1
        return tau.abs() * flips
    if signs is None:
        raise ValueError(f"mask {variant!r} needs signs for tensor {name!r}")
    if min_margin > 0:
        signs, agree = margin_filtered(signs, n_votes, min_margin, name), None
    if agree is None and variant in ("gradfix", "mean", "oracle", "margin", "random"):
        agree = sign_agreement_mask(tau, signs)
    no_evidence_fill = (~evidence) & (tau != 0) if evidence is not None and no_evidence != "drop" else None
    if variant in ("gradfix", "mean", "oracle"):
        out = torch.where(agree, tau, 0.0)
    elif variant == "force":
        out = tau.abs() * torch.sign(signs).to(tau.dtype)
    elif variant == "soft":
        rms = tau.pow(2).mean().sqrt()
        if rms == 0:
            return torch.zeros_like(tau)
        weight = torch.tanh(rho * torch.sign(signs).to(tau.dtype) * tau / rms).clamp_min(0)
        out = tau * weight
    elif variant == "margin":
        n_votes = _require_vote_counts(signs, n_votes, "mask 'margin'", name)
        out = torch.where(agree, tau * (signs.abs().to(tau.dtype) / n_votes), 0.0)
    elif variant == "random":  # as many coordinates as gradfix keeps (no-evidence ones too unless dropped)
        kept = int(keep_mask("gradfix", tau, signs=signs, evidence=evidence, no_evidence=no_evidence,
                             agree=agree).sum())
        candidates = torch.nonzero(tau.flatten() != 0).squeeze(1)
        order = torch.randperm(candidates.numel(), generator=tensor_generator(seed, name))[:kept]
        flat = torch.zeros(tau.numel(), dtype=torch.bool)
        flat[candidates[order]] = True
        return torch.where(flat.view(tau.shape), tau, 0.0)
    else:
        raise ValueError(f"unknown mask variant {variant!r}")
    if no_evidence_fill is None:
        return out
    return torch.where(no_evidence_fill, tau if no_evidence == "keep" else tau * no_evidence_scale, out)


def transported(target: torch.Tensor, tau: torch.Tensor, mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """θ_B + α·(m ⊙ τ_A), in fp32."""
    return target + alpha * torch.where(mask, tau, torch.zeros_like(tau))
