"""Merge-then-Mask: merge the task vectors first, then mask with the consensus ŝ = sign(Σ_t ŝ_t).

The consensus counts each task once (the sign of its own vote), so a task with many samples does not
outvote the others. A coordinate has evidence when any task's samples touched it.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from .masks import masked_task_vector
from .base import MASK_PARAMETERS, MERGE_PARAMETERS, MergeMethod, TensorInputs, mask_options
from .combining import merge_vectors
from .registry import register


def consensus_signs(signs: list[Optional[torch.Tensor]]) -> Optional[torch.Tensor]:
    """sign(Σ_t sign(ŝ_t)); None when the mask variant needs no signs."""
    if any(s is None for s in signs):
        return None
    total = torch.zeros(signs[0].shape, dtype=torch.int32)
    for s in signs:
        total += torch.sign(s).to(torch.int32)
    return torch.sign(total).to(torch.int8)


def any_evidence(evidence: list[Optional[torch.Tensor]]) -> Optional[torch.Tensor]:
    """Evidence of the consensus: a coordinate touched by any task (None = every coordinate)."""
    if any(e is None for e in evidence):
        return None
    out = evidence[0].clone()
    for e in evidence[1:]:
        out |= e
    return out


class MergeThenMask(MergeMethod):
    def combine(self, vectors: list[torch.Tensor], inputs: TensorInputs, params: Mapping[str, Any]) -> torch.Tensor:
        merged = merge_vectors(vectors, inputs, params)
        return masked_task_vector(params["mask"], merged, consensus_signs(inputs.signs), any_evidence(inputs.evidence),
                                  name=inputs.name, **mask_options(params))


MERGE_THEN_MASK = register(MergeThenMask(
    name="merge_then_mask", pretty_name="GradFix Merge-then-Mask",
    description="Multi-task: merge the task vectors (task arithmetic or TIES), then mask the result with the "
                "consensus sign(Σ_t ŝ_t) of the tasks' votes. The paper's best multi-task pipeline.",
    parameters=MASK_PARAMETERS + MERGE_PARAMETERS, vote_margins=False,
))
