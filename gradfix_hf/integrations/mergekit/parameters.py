"""The parameters of each method: what a gradfix_hf method takes in a mergekit YAML (per fine-tune and shared),
declared to mergekit as its ``MergeMethodSpec`` and validated the way a recipe is. Read by the kernel, the
mergekit method and the config check alike, so the three agree on every name and value.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

from ...errors import RecipeError
from ...methods import MergeMethod
from .library import import_merge_methods

PAPER_URL = "https://arxiv.org/abs/2510.09658"
#: parameters every GradFix mergekit method has besides its own (shared: one value for the whole merge)
SHARED_EXTRA = ("alpha", "force")


def mergekit_name(name: str) -> str:
    """The mergekit name of a gradfix_hf method: ``gradfix`` stays, every other gets a ``gradfix_`` prefix
    (mergekit already has ``task_arithmetic`` and ``ties``, with other semantics)."""
    return name if name.startswith("gradfix") else f"gradfix_{name}"


def uses_votes(method: MergeMethod) -> bool:
    """Whether some parameter value makes ``method`` need a sign estimate (every masked method)."""
    return "mask" in method.parameter_names()


def per_model_parameters(method: MergeMethod) -> tuple[str, ...]:
    """Per fine-tune parameters: θ_A (``source``), the votes file and the task weight, as the method uses."""
    names = ["source"]
    if uses_votes(method):
        names.append("votes")
    if method.max_tasks != 1:
        names.append("weight")
    return tuple(names)


def shared_parameters(method: MergeMethod) -> tuple[str, ...]:
    return SHARED_EXTRA + tuple(method.parameter_names())


def method_spec(method: MergeMethod):
    """mergekit's MergeMethodSpec of ``method``. The method's own parameters default to None (= not given),
    so gradfix_hf's validation sees exactly what the YAML set (e.g. ``density`` without ``merge: ties``)."""
    mk = import_merge_methods()
    from mergekit.merge_methods.base import ParameterSpec as MkParameter

    shared = [MkParameter("alpha", float, mk.ParameterScope.SHARED, 1.0, "output = θ_B + alpha·delta"),
              MkParameter("force", bool, mk.ParameterScope.SHARED, False, "allow alpha outside (0, 1]")]
    shared += [MkParameter(p.name, Optional[p.kind], mk.ParameterScope.SHARED, None, p.doc)
               for p in method.parameters]
    per_model = [MkParameter("source", str, mk.ParameterScope.NON_BASE, description="θ_A of this fine-tune "
                             "(local folder or Hub id): τ = fine-tune − θ_A")]
    if uses_votes(method):
        per_model.append(MkParameter("votes", Optional[str], mk.ParameterScope.NON_BASE, None,
                                     "votes file of the target for this task (gradfix votes -o FILE)"))
    if method.max_tasks != 1:
        per_model.append(MkParameter("weight", float, mk.ParameterScope.NON_BASE, 1.0, "task weight w_t"))
    return mk.MergeMethodSpec(
        name=mergekit_name(method.name), parameters=tuple(shared + per_model),
        contract=mk.InputContract(base=mk.BasePolicy.REQUIRED, min_non_base=method.min_tasks,
                                  max_non_base=method.max_tasks),
        pretty_name=method.pretty_name, reference_url=PAPER_URL,
        # gradfix_hf's kernels run on CPU in fp32 (as `gradfix run`); inputs stay where mergekit loaded them
        uses_accelerator=False,
    )


def check_alpha(alpha: float, force: bool, where: str) -> None:
    if not math.isfinite(alpha):
        raise RecipeError(f"{where}.alpha: must be finite, got {alpha!r}.")
    if not force and not 0.0 < alpha <= 1.0:
        raise RecipeError(f"{where}.alpha: {alpha} is outside (0, 1]; set force: true to allow it.")


def validate_parameters(method: MergeMethod, values: Mapping[str, Any], where: str) -> dict:
    """gradfix_hf's validation of the given values, plus what a per-tensor mergekit kernel cannot run."""
    params = method.validate(values, where)
    if method.sign_source(params) == "oracle":
        raise RecipeError(f"{where}.mask: 'oracle' needs θ_B fine-tuned on each task, which the mergekit methods "
                          "do not read; use another mask, or run the recipe with `gradfix run`.")
    if method.needs_global_threshold(params):
        raise RecipeError(f"{where}.variant: TIES 'original' trims each whole task vector at one global threshold, "
                          "but mergekit merges one tensor at a time; use variant: paper (per-tensor trim) or "
                          "density: 1, or run the recipe with `gradfix run`, which supports it.")
    return params
