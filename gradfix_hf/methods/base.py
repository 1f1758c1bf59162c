"""What a merge method is: declared parameters (validated, mergekit style) and a per-tensor kernel.

A method sees one tensor name at a time (:class:`TensorInputs`: the task vectors τ_t of every task or source,
their sign estimates ŝ_t and evidence) and returns the delta that the streaming engine adds to the target:
output = θ_B + α·delta. Kernels have two steps so global statistics can be taken in between:
``task_vectors`` (per task: a mask variant, or τ unchanged) and ``combine`` (the merge of those vectors).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from ..errors import RecipeError, did_you_mean
from .masks import MASK_VARIANTS, NO_EVIDENCE_POLICIES, VOTE_COUNT_VARIANTS, masked_task_vector, sign_source


@dataclass(frozen=True)
class ParameterSpec:
    """One parameter of a merge method: type, default, allowed values and a check."""

    name: str
    kind: type
    default: Any
    doc: str
    choices: Optional[tuple] = None
    check: Optional[Callable[[Any], bool]] = None
    requirement: str = ""

    def validate(self, value: Any, where: str) -> Any:
        """The value as its ``kind``: a bool is ``true``/``false`` only (never the string "false"), an int is not
        a bool, a float is a finite int or float; then its choices and check."""
        if self.kind is bool and not isinstance(value, bool):
            got = f"the string {value!r}" if isinstance(value, str) else repr(value)
            raise RecipeError(f"{where}: must be true or false (a YAML boolean), got {got}.")
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.kind) or (self.kind is not bool and isinstance(value, bool)):
            raise RecipeError(f"{where}: must be a {self.kind.__name__}, got {value!r}.")
        if self.kind is float and not math.isfinite(value):
            raise RecipeError(f"{where}: must be a finite float, got {value!r}.")
        if self.choices is not None and value not in self.choices:
            raise RecipeError(f"{where}: {value!r} is not one of {', '.join(map(str, self.choices))}."
                              f"{did_you_mean(value, self.choices)}")
        if self.check is not None and not self.check(value):
            raise RecipeError(f"{where}: {value!r} is invalid: {self.requirement}.")
        return value


@dataclass
class TensorInputs:
    """Everything a kernel may use for one tensor name: one entry per task (or source) in recipe order."""

    name: str
    taus: list[torch.Tensor]
    signs: list[Optional[torch.Tensor]]
    evidence: list[Optional[torch.Tensor]]
    weights: list[float]
    thresholds: Optional[list[float]] = None  # global trim thresholds per task (original TIES), when computed
    agreement: Optional[list[Optional[torch.Tensor]]] = None  # 1{sign(τ_t) = ŝ_t ≠ 0}, when already computed
    n_votes: Optional[list[Optional[int]]] = None  # N behind each task's integer votes (margin masks need it)


MASK_PARAMETERS = (
    ParameterSpec("mask", str, "gradfix", "mask variant applied with the target's sign estimate", MASK_VARIANTS),
    ParameterSpec("no_evidence", str, "drop", "coordinates no sample's gradient touched: drop (paper), keep τ, "
                  "or scale τ by no_evidence_scale", NO_EVIDENCE_POLICIES),
    ParameterSpec("no_evidence_scale", float, 0.5, "no_evidence: scale — the fraction of τ kept where no sample "
                  "gave evidence", check=lambda v: 0 <= v <= 1, requirement="must be in [0, 1]"),
    ParameterSpec("min_margin", float, 0.0, "keep a vote only when |v|/N >= min_margin (weaker votes become ties)",
                  check=lambda v: 0 <= v <= 1, requirement="must be in [0, 1]"),
    ParameterSpec("seed", int, 0, "seed of the random and random-sign masks"),
    ParameterSpec("rho", float, 1.0, "steepness ρ of the soft mask", check=lambda v: v > 0, requirement="must be > 0"),
)
MERGE_PARAMETERS = (
    ParameterSpec("merge", str, "task_arithmetic", "how the task vectors are combined", ("task_arithmetic", "ties")),
    ParameterSpec("normalize", bool, False, "task arithmetic: divide the weighted sum by the sum of weights"),
    ParameterSpec("variant", str, "paper", "TIES variant: paper (per-tensor trim, count election) or original "
                  "(global trim, sign of summed magnitudes)", ("paper", "original")),
    ParameterSpec("density", float, 0.2, "TIES: fraction of each task vector kept by the trim",
                  check=lambda v: 0 < v <= 1, requirement="must be in (0, 1]"),
)
TIES_ONLY = ("variant", "density")
TA_ONLY = ("normalize",)


@dataclass
class MergeMethod:
    """A registered merge method: name, parameters, task-count limits and the per-tensor kernel."""

    name: str
    pretty_name: str
    description: str
    parameters: Sequence[ParameterSpec] = field(default_factory=tuple)
    min_tasks: int = 1
    max_tasks: Optional[int] = None
    shared_vote: bool = False  # one vote (from the first task's data) serves every input
    vote_margins: bool = True  # the mask sees each task's own integer votes (min_margin, mask: margin apply)

    def parameter_names(self) -> list[str]:
        return [p.name for p in self.parameters]

    def validate(self, raw: Optional[Mapping[str, Any]], where: str = "method") -> dict:
        """Parameters with defaults filled in; unknown names are rejected with the closest valid one."""
        raw = dict(raw or {})
        specs = {p.name: p for p in self.parameters}
        for key in raw:
            if key not in specs:
                valid = did_you_mean(key, specs) or f" Valid parameters of {self.name!r}: {', '.join(specs) or 'none'}."
                raise RecipeError(f"{where}: unknown parameter {key!r} for method {self.name!r}.{valid}")
        params = {name: spec.validate(raw[name], f"{where}.{name}") if name in raw else spec.default
                  for name, spec in specs.items()}
        if "merge" in params:  # parameters of the other merge are refused if given, and left out
            unused = TA_ONLY if params["merge"] == "ties" else TIES_ONLY
            for key in unused:
                if key in raw:
                    raise RecipeError(f"{where}.{key}: only applies with merge: "
                                      f"{'task_arithmetic' if key in TA_ONLY else 'ties'} (this recipe has merge: "
                                      f"{params['merge']}).")
                params.pop(key)
        self._check_mask_parameters(params, specs, where)
        return params

    def _check_mask_parameters(self, params: dict, specs: Mapping[str, ParameterSpec], where: str) -> None:
        """Refuse mask parameters that would silently do nothing or cannot apply with the chosen mask.
        Re-validating a full parameter set is a no-op: only a non-default ``no_evidence_scale`` is refused."""
        if "mask" not in params:
            return
        if params["no_evidence_scale"] != specs["no_evidence_scale"].default and params["no_evidence"] != "scale":
            raise RecipeError(f"{where}.no_evidence_scale: only applies with no_evidence: scale "
                              f"(this recipe has no_evidence: {params['no_evidence']}).")
        if params["min_margin"] == 0 and params["mask"] != "margin":
            return
        if not self.vote_margins:
            raise RecipeError(f"{where}: vote margins (min_margin, mask: margin) apply to one task's votes; "
                              f"{self.name} masks with the consensus sign of several tasks, which has no margin. "
                              "Use mask_then_merge.")
        if params["mask"] not in VOTE_COUNT_VARIANTS:
            raise RecipeError(f"{where}.min_margin: vote margins need integer majority votes; mask "
                              f"{params['mask']!r} has no vote counts (use one of {', '.join(VOTE_COUNT_VARIANTS)}).")

    def check_tasks(self, count: int, where: str = "tasks") -> None:
        if count < self.min_tasks or (self.max_tasks is not None and count > self.max_tasks):
            wanted = (f"exactly {self.min_tasks}" if self.max_tasks == self.min_tasks else
                      f"at least {self.min_tasks}" if self.max_tasks is None else
                      f"{self.min_tasks} to {self.max_tasks}")
            raise RecipeError(f"{where}: method {self.name!r} takes {wanted} task vector(s), the recipe gives {count}.")

    # --- what the engine must provide -------------------------------------------------------------------
    def sign_source(self, params: Mapping[str, Any]) -> Optional[str]:
        """``votes``, ``mean-votes``, ``oracle`` or None (no sign estimate needed)."""
        return sign_source(params["mask"]) if "mask" in params else None

    def needs_global_threshold(self, params: Mapping[str, Any]) -> bool:
        return (params.get("merge") == "ties" and params["variant"] == "original"
                and params["density"] < 1)

    # --- the kernel -----------------------------------------------------------------------------------------
    def task_vectors(self, inputs: TensorInputs, params: Mapping[str, Any]) -> list[torch.Tensor]:
        return list(inputs.taus)

    def combine(self, vectors: list[torch.Tensor], inputs: TensorInputs, params: Mapping[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def delta(self, inputs: TensorInputs, params: Mapping[str, Any]) -> torch.Tensor:
        """The fp32 delta added (times α) to θ_B for this tensor."""
        return self.combine(self.task_vectors(inputs, params), inputs, params)


def mask_each(inputs: TensorInputs, params: Mapping[str, Any]) -> list[torch.Tensor]:
    """Mask every task vector with its own sign estimate (the first step of Mask-then-Merge)."""
    agreement = inputs.agreement or [None] * len(inputs.taus)
    n_votes = inputs.n_votes or [None] * len(inputs.taus)
    return [masked_task_vector(params["mask"], tau, signs, evidence, agree=agree, n_votes=n,
                               name=f"{inputs.name}#{t}", **mask_options(params))
            for t, (tau, signs, evidence, agree, n) in enumerate(zip(inputs.taus, inputs.signs, inputs.evidence,
                                                                     agreement, n_votes))]


def mask_options(params: Mapping[str, Any]) -> dict:
    """The keyword arguments of :func:`~gradfix_hf.methods.masks.masked_task_vector` a method's parameters set."""
    return {key: params[key] for key in ("no_evidence", "no_evidence_scale", "min_margin", "seed", "rho")}
