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
* ``naive``: τ unchanged (θ_B + α·τ, the baseline).

A tie (ŝ = 0) or τ = 0 keeps nothing. Coordinates with no evidence (no sample's gradient touched them) have
ŝ = 0 too; the ``no_evidence`` policy drops them (the paper) or keeps τ there (``keep``).
"""
from __future__ import annotations

import hashlib
from typing import Optional

import torch

MASK_VARIANTS = ("gradfix", "mean", "oracle", "force", "random", "random-sign", "soft", "naive")
NO_EVIDENCE_POLICIES = ("drop", "keep")


def sign_source(variant: str) -> Optional[str]:
    """Where a variant's ŝ comes from: ``votes`` (majority), ``mean-votes``, ``oracle`` (sign of τ_B) or None."""
    if variant in ("naive", "random-sign"):
        return None
    if variant == "oracle":
        return "oracle"
    return "mean-votes" if variant == "mean" else "votes"


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
    if signs is None:
        raise ValueError(f"mask {kind!r} needs signs")
    mask = sign_agreement_mask(tau, signs) if agree is None else agree
    if evidence is not None and no_evidence == "keep":
        return mask | ((~evidence) & (tau != 0))
    return mask


def tensor_generator(seed: int, name: str) -> torch.Generator:
    """A generator seeded by (seed, tensor name): the same draw whatever order tensors are processed in."""
    digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def masked_task_vector(variant: str, tau: torch.Tensor, signs: Optional[torch.Tensor] = None,
                       evidence: Optional[torch.Tensor] = None, *, no_evidence: str = "drop", seed: int = 0,
                       rho: float = 1.0, name: str = "", agree: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The masked τ of one tensor for ``variant`` (see the module docstring for each formula)."""
    if variant == "naive":
        return tau.clone()
    if variant == "random-sign":
        flips = torch.randint(0, 2, tau.shape, generator=tensor_generator(seed, name)).to(tau.dtype) * 2 - 1
        return tau.abs() * flips
    if signs is None:
        raise ValueError(f"mask {variant!r} needs signs for tensor {name!r}")
    no_evidence_keep = (~evidence) & (tau != 0) if evidence is not None and no_evidence == "keep" else None
    if variant in ("gradfix", "mean", "oracle"):
        return torch.where(keep_mask(variant, tau, signs=signs, evidence=evidence, no_evidence=no_evidence,
                                     agree=agree), tau, 0.0)
    if variant == "force":
        out = tau.abs() * torch.sign(signs).to(tau.dtype)
    elif variant == "soft":
        rms = tau.pow(2).mean().sqrt()
        if rms == 0:
            return torch.zeros_like(tau)
        weight = torch.tanh(rho * torch.sign(signs).to(tau.dtype) * tau / rms).clamp_min(0)
        out = tau * weight
    elif variant == "random":
        kept = int(keep_mask("gradfix", tau, signs=signs, evidence=evidence, no_evidence=no_evidence,
                             agree=agree).sum())
        candidates = torch.nonzero(tau.flatten() != 0).squeeze(1)
        order = torch.randperm(candidates.numel(), generator=tensor_generator(seed, name))[:kept]
        flat = torch.zeros(tau.numel(), dtype=torch.bool)
        flat[candidates[order]] = True
        return torch.where(flat.view(tau.shape), tau, 0.0)
    else:
        raise ValueError(f"unknown mask variant {variant!r}")
    return torch.where(no_evidence_keep, tau, out) if no_evidence_keep is not None else out


def transported(target: torch.Tensor, tau: torch.Tensor, mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """θ_B + α·(m ⊙ τ_A), in fp32."""
    return target + alpha * torch.where(mask, tau, torch.zeros_like(tau))
