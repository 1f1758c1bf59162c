"""GradFix merge methods for mergekit: :func:`register_methods` and the ``gradfix-mergekit-yaml`` command.

mergekit hands a merge method one output tensor at a time, from its base model (here θ_B, the target) and
from each fine-tune. GradFix also needs θ_A, the pre-trained model each fine-tune started from (which is not
mergekit's base), and the target's gradient-sign votes. Both are string parameters of each fine-tune
(``source``, ``votes``): the kernel reads θ_A's tensor (memory-mapped, with gradfix_hf's reader and name
alignment) and the vote of the same name, and calls the per-tensor kernel of gradfix_hf's method registry,
the code ``gradfix run`` uses, so both front ends write the same tensors.

mergekit (LGPL-3.0-only) is imported lazily, here only, never copied. Nothing registers on
``import gradfix_hf``: call :func:`register_methods` or use the ``gradfix-mergekit-yaml`` command.

The modules, bottom up: ``library`` (mergekit, imported on first use), ``parameters`` (what each method takes
and how it is validated), ``inputs`` (θ_A and the votes, read by tensor name), ``kernel`` (one output tensor),
``registration`` (the mergekit method class and :func:`register_methods`), ``config_check``
(:func:`check_config`) and ``command`` (``gradfix-mergekit-yaml``).
"""
from .command import main
from .config_check import check_config
from .inputs import check_votes, load_votes, weight_names
from .kernel import merge_tensor
from .library import INSTALL_HINT
from .parameters import (PAPER_URL, SHARED_EXTRA, mergekit_name, per_model_parameters, shared_parameters, uses_votes,
                         validate_parameters)
from .registration import register_methods

__all__ = ["register_methods", "check_config", "main", "merge_tensor", "mergekit_name", "uses_votes",
           "per_model_parameters", "shared_parameters", "validate_parameters", "load_votes", "check_votes",
           "weight_names", "INSTALL_HINT", "PAPER_URL", "SHARED_EXTRA"]
