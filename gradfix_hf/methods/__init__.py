"""What a merge computes for one tensor: the merge-method registry, mergekit style, and the mask variants.

Pure tensor math (torch only; no files, no models): the recipe validates its ``method`` section against the
parameters each method declares here, and the streaming merge (:mod:`gradfix_hf.merge`) calls the kernels.

Methods, one module each, in a registry (``get(name)``, ``registered_methods()``): ``gradfix`` (one task
vector), ``task_arithmetic``, ``ties`` (variants ``paper`` and ``original``), ``mask_then_merge``,
``merge_then_mask`` and ``multi_source``. Mask variants (what survives of τ given the target's sign estimate):
:mod:`.masks`.
"""
# registration order = the order users see in errors and docs
from . import gradfix  # noqa: F401
from . import task_arithmetic  # noqa: F401
from . import ties  # noqa: F401
from . import mask_then_merge  # noqa: F401
from . import merge_then_mask  # noqa: F401
from . import multi_source  # noqa: F401
from .base import MergeMethod, ParameterSpec, TensorInputs
from .masks import MASK_VARIANTS, keep_mask, masked_task_vector, sign_agreement_mask, transported
from .registry import get, register, registered_methods
from .ties import GlobalTrim, ties_merge, trim_per_tensor
from .task_arithmetic import task_arithmetic as task_arithmetic_merge

__all__ = ["MergeMethod", "ParameterSpec", "TensorInputs", "get", "register", "registered_methods", "GlobalTrim",
           "ties_merge", "trim_per_tensor", "task_arithmetic_merge", "MASK_VARIANTS", "keep_mask",
           "masked_task_vector", "sign_agreement_mask", "transported"]
