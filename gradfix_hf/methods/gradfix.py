"""GradFix on one task vector: θ_B + α·(m ⊙ τ_A), m from the target's gradient-sign votes (or a variant)."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from .base import MASK_PARAMETERS, MergeMethod, TensorInputs, mask_each
from .registry import register


class GradFix(MergeMethod):
    def task_vectors(self, inputs: TensorInputs, params: Mapping[str, Any]) -> list[torch.Tensor]:
        return mask_each(inputs, params)

    def combine(self, vectors: list[torch.Tensor], inputs: TensorInputs, params: Mapping[str, Any]) -> torch.Tensor:
        return vectors[0]


GRADFIX = register(GradFix(
    name="gradfix", pretty_name="GradFix",
    description="Transport one task vector: keep the coordinates of τ_A whose sign agrees with the target's "
                "gradient-sign vote (or another mask variant).",
    parameters=MASK_PARAMETERS, min_tasks=1, max_tasks=1,
))
