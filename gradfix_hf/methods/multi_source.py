"""Multi-source transport: K fine-tunes of one task from K source pre-trainings, onto one target.

Each τ_k = θ_k^ft − θ_k is masked with the same sign estimate ŝ (one vote on the target, computed once from
the task's data, since the target and the data are shared), then the masked vectors are merged
(Mask-then-Merge, the paper's best multi-source pipeline).
"""
from __future__ import annotations

from .base import MASK_PARAMETERS, MERGE_PARAMETERS
from .mask_then_merge import MaskThenMerge
from .registry import register

MULTI_SOURCE = register(MaskThenMerge(
    name="multi_source", pretty_name="GradFix multi-source",
    description="K sources fine-tuned on one task: mask every τ_k with one shared vote on the target "
                "(computed once), then merge with task arithmetic or TIES.",
    parameters=MASK_PARAMETERS + MERGE_PARAMETERS, shared_vote=True,
))
