"""How Mask-then-Merge and Merge-then-Mask combine task vectors: task arithmetic or TIES, as the parameters say."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from .base import TensorInputs
from .task_arithmetic import task_arithmetic
from .ties import ties_merge


def merge_vectors(vectors: list[torch.Tensor], inputs: TensorInputs, params: Mapping[str, Any]) -> torch.Tensor:
    """Task arithmetic or TIES (``params["merge"]``) of the (masked) task vectors of one tensor."""
    if params["merge"] == "ties":
        return ties_merge(vectors, inputs.weights, variant=params["variant"], density=params["density"],
                          thresholds=inputs.thresholds)
    return task_arithmetic(vectors, inputs.weights, normalize=params["normalize"])
