"""Mask-then-Merge: mask each task vector with its own task's sign estimate ŝ_t, then merge (TA or TIES)."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from .base import MASK_PARAMETERS, MERGE_PARAMETERS, MergeMethod, TensorInputs, mask_each
from .combining import merge_vectors
from .registry import register


class MaskThenMerge(MergeMethod):
    def task_vectors(self, inputs: TensorInputs, params: Mapping[str, Any]) -> list[torch.Tensor]:
        return mask_each(inputs, params)

    def combine(self, vectors: list[torch.Tensor], inputs: TensorInputs, params: Mapping[str, Any]) -> torch.Tensor:
        return merge_vectors(vectors, inputs, params)


MASK_THEN_MERGE = register(MaskThenMerge(
    name="mask_then_merge", pretty_name="GradFix Mask-then-Merge",
    description="Multi-task: mask each τ_t with its own task's votes, then merge with task arithmetic or TIES.",
    parameters=MASK_PARAMETERS + MERGE_PARAMETERS,
))
