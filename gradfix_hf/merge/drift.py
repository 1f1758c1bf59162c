"""The drift report of a run: how far θ_B moved from θ_A, and how much of τ_A the target's votes confirm.

Why: whether GradFix (or naive addition) can help depends on how far the new release drifted. A small relative
distance ‖θ_B − θ_A‖ / ‖θ_A‖ with a high sign agreement means τ_A mostly still points downhill on θ_B (naive
addition transfers); a large distance with agreement near 50% is the paper's regime, where the mask matters.

Per merged tensor the streaming merge records exact sums (:func:`tensor_drift`); :func:`drift_report` adds
them up per layer group (:func:`layer_group`) and over the whole model. Definitions, per task vector t:

* ``relative_distance`` = ‖θ_B − θ_A,t‖₂ / ‖θ_A,t‖₂ over the group's coordinates;
* ``relative_task_vector`` = ‖τ_t‖₂ / ‖θ_A,t‖₂ (how large the fine-tuning step is against that drift);
* ``sign_agreement`` = #{sign(τ_t) = ŝ_t} / #{τ_t ≠ 0 and ŝ_t ≠ 0}: among coordinates where the task vector
  and the target's sign estimate (the vote, or τ_B for the oracle) both have a sign, the share that agree
  (None for masks without a sign estimate, e.g. naive);
* ``kept_fraction`` = share of the group's coordinates the merge changed (delta ≠ 0).
"""
from __future__ import annotations

import math
import re
from typing import Optional, Sequence

import torch

_INDEX = re.compile(r"^\d+$")


def layer_group(name: str) -> str:
    """The report group of a parameter: its name up to the first layer index (``bert.encoder.layer.3``), else
    its module (``bert.embeddings.word_embeddings``, ``classifier``)."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if _INDEX.match(part):
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1]) or name


def drift_norms(target: torch.Tensor, source: torch.Tensor, tau: torch.Tensor) -> tuple[float, float, float]:
    """‖θ_A‖², ‖θ_B − θ_A‖², ‖τ‖² of one tensor (fp32 reductions)."""
    return (float(torch.linalg.vector_norm(source)) ** 2, float(torch.dist(target, source)) ** 2,
            float(torch.linalg.vector_norm(tau)) ** 2)


def sign_agreement(tau: torch.Tensor, sign: Optional[torch.Tensor]) -> tuple[Optional[torch.Tensor], tuple]:
    """The agreement mask 1{sign(τ) = ŝ ≠ 0} (what the sign-agreement masks keep; see
    :func:`~gradfix_hf.methods.masks.sign_agreement_mask`, same formula) and the counts (#agree, #where τ and ŝ
    both have a sign); (None, (None, None)) without ŝ. Computed once, shared with the kernel."""
    if sign is None:
        return None, (None, None)
    product = tau * (torch.sign(sign) if sign.is_floating_point() else sign)
    agree = product > 0
    return agree, (int(torch.count_nonzero(agree)), int(torch.count_nonzero(product != 0)))  # bool: faster


def tensor_drift(norms: Sequence[tuple[float, float, float]], agreement: Sequence[tuple]) -> dict:
    """The per-tensor record (one entry per task vector) that :func:`drift_report` sums per group."""
    return {"source_sq": [n[0] for n in norms], "diff_sq": [n[1] for n in norms], "tau_sq": [n[2] for n in norms],
            "agree": [a[0] for a in agreement], "decided": [a[1] for a in agreement]}


def _summarise(entries: list[dict]) -> dict:
    numel = sum(e["numel"] for e in entries)
    kept = sum(e["kept_fraction"] * e["numel"] for e in entries)
    tasks = len(entries[0]["drift"]["source_sq"])
    distance, size, agreement = [], [], []
    for t in range(tasks):
        source_sq = sum(e["drift"]["source_sq"][t] for e in entries)
        diff_sq = sum(e["drift"]["diff_sq"][t] for e in entries)
        tau_sq = sum(e["drift"]["tau_sq"][t] for e in entries)
        distance.append(math.sqrt(diff_sq / source_sq) if source_sq > 0 else None)
        size.append(math.sqrt(tau_sq / source_sq) if source_sq > 0 else None)
        counts = [(e["drift"]["agree"][t], e["drift"]["decided"][t]) for e in entries]
        if any(a is None for a, _ in counts):
            agreement.append(None)
        else:
            decided = sum(d for _, d in counts)
            agreement.append(sum(a for a, _ in counts) / decided if decided else None)
    return {"coordinates": numel, "relative_distance": distance, "relative_task_vector": size,
            "sign_agreement": agreement,
            "kept_fraction": kept / max(numel, 1)}


def drift_report(per_tensor: dict) -> Optional[dict]:
    """Per layer group and overall: relative distance θ_B vs θ_A, sign agreement of τ_A with ŝ, kept fraction
    (lists hold one value per task vector, in recipe order)."""
    entries = {name: stats for name, stats in per_tensor.items() if stats and "drift" in stats}
    if not entries:
        return None
    groups: dict[str, list[dict]] = {}
    for name, stats in entries.items():
        groups.setdefault(layer_group(name), []).append(stats)
    return {"groups": {group: _summarise(items) for group, items in groups.items()},
            "total": _summarise(list(entries.values()))}


def _cell(values: list) -> str:
    return " / ".join("–" if v is None else f"{v:.4f}" for v in values)


def drift_table(drift: Optional[dict]) -> str:
    """The report as a markdown table (model card, ``gradfix inspect``)."""
    if not drift:
        return "No merged tensor: no drift report."
    lines = ["| layer group | coordinates | ‖θ_B − θ_A‖ / ‖θ_A‖ | sign agreement of τ_A with ŝ | kept fraction |",
             "|---|---|---|---|---|"]
    rows = list(drift["groups"].items()) + [("**all transported**", drift["total"])]
    for group, s in rows:
        label = group if group.startswith("**") else f"`{group}`"
        lines.append(f"| {label} | {s['coordinates']} | {_cell(s['relative_distance'])} | "
                     f"{_cell(s['sign_agreement'])} | {s['kept_fraction']:.4f} |")
    return "\n".join(lines)
