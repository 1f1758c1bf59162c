"""The ``method`` section: a merge method from the registry (:mod:`gradfix_hf.methods`) with its parameters and
α, or ``auto`` with the candidates a validation split chooses among (run by :mod:`gradfix_hf.transport.auto`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from ..errors import RecipeError
from ..methods import MergeMethod, get
from .few_shot import FEW_SHOT_CANDIDATES, FewShotStage
from .validation import check_fields, unknown_key_hint

AUTO = "auto"
#: the candidates of ``method: auto`` when the recipe lists none (a mask name is shorthand for ``{mask: NAME}``)
DEFAULT_CANDIDATES: tuple = ("naive", "gradfix", {"mask": "gradfix", "no_evidence": "keep"}, "soft")
#: masks that cannot be candidates, and why
REFUSED = {
    "mean": "it needs votes aggregated by their mean (a second gradient pass); run method gradfix with mask mean",
    "oracle": "it needs θ_B fine-tuned on the task (an upper bound for experiments, not a choice)",
}


def validate_candidates(raw: Any, where: str = "method.candidates") -> tuple[dict, ...]:
    """The candidates as GradFix parameter mappings (as given: defaults are filled in when a job is built), a
    ``few_shot`` entry parsed into a :class:`~gradfix_hf.recipe.few_shot.FewShotStage` (the merge at its best α,
    then fine-tuned on the vote samples; mask ``none``: θ_B itself)."""
    if raw is None:
        raw = DEFAULT_CANDIDATES
    if not isinstance(raw, (list, tuple)) or not raw:
        raise RecipeError(f"{where}: a non-empty list of mask names or GradFix parameter mappings, got {raw!r}.")
    out: list[dict] = []
    for i, item in enumerate(raw):
        spec = FEW_SHOT_CANDIDATES.get(item, {"mask": item}) if isinstance(item, str) else item
        if not isinstance(spec, dict):
            raise RecipeError(f"{where}[{i}]: a mask name or a mapping like {{mask: gradfix, no_evidence: keep}} "
                              f"(or one of {', '.join(FEW_SHOT_CANDIDATES)}), got {item!r}.")
        spec = dict(spec)
        if "few_shot" in spec:
            spec["few_shot"] = FewShotStage.parse(spec["few_shot"], f"{where}[{i}].few_shot")
        full = get("gradfix").validate({k: v for k, v in spec.items() if k != "few_shot"}, f"{where}[{i}]")
        if full["mask"] in REFUSED:
            raise RecipeError(f"{where}[{i}]: mask {full['mask']!r} cannot be a candidate: {REFUSED[full['mask']]}.")
        if full["mask"] == "none" and "few_shot" not in spec:
            raise RecipeError(f"{where}[{i}]: mask 'none' is θ_B itself; as a candidate it needs few_shot (e.g. "
                              "few-shot: θ_B fine-tuned on the vote samples).")
        if spec in out:
            raise RecipeError(f"{where}[{i}]: {item!r} is listed twice.")
        out.append(spec)
    return tuple(out)


def _shorthand(spec: dict) -> Optional[str]:
    """The name of a few-shot candidate shorthand that ``spec`` spells out (``few-shot``…), else None."""
    for name, short in FEW_SHOT_CANDIDATES.items():
        if spec == {**short, "few_shot": FewShotStage.parse(short["few_shot"])}:
            return name
    return None


def candidate_key(spec: dict) -> str:
    """A short stable name: ``gradfix``, ``gradfix+no_evidence=keep``, ``naive``, ``few-shot``,
    ``gradfix+few_shot=2``."""
    short = _shorthand(spec)
    if short:
        return short
    stage = spec.get("few_shot")
    extra = "".join(f"+{k}={spec[k]}" for k in sorted(spec) if k not in ("mask", "few_shot"))
    if stage is not None:
        extra += "+few_shot=" + ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{v}"
                                         for k, v in stage.to_dict().items())
    return f"{spec.get('mask', 'gradfix')}{extra}"


def candidate_label(spec: dict) -> str:
    """How tables name a candidate: ``θ_B + α·τ_A (naive)``, ``GradFix (gradfix, no_evidence: keep)``,
    ``θ_B few-shot FT (1 pass)``, ``GradFix (gradfix) + few-shot FT (1 pass)``."""
    stage = spec.get("few_shot")
    if stage is not None:
        if spec.get("mask") == "none":
            return f"θ_B {stage.describe()}"
        return f"{candidate_label({k: v for k, v in spec.items() if k != 'few_shot'})} + {stage.describe()}"
    if spec.get("mask") == "naive" and len(spec) == 1:
        return "θ_B + α·τ_A (naive)"
    extra = ", ".join(f"{k}: {spec[k]}" for k in sorted(spec) if k != "mask")
    return f"GradFix ({spec.get('mask', 'gradfix')}{', ' + extra if extra else ''})"


def candidate_to_yaml(spec: dict) -> Any:
    """A candidate as a recipe spells it (its shorthand, a mask name, or a mapping)."""
    short = _shorthand(spec)
    if short:
        return short
    if list(spec) == ["mask"]:
        return spec["mask"]
    return {k: (v.to_dict() if isinstance(v, FewShotStage) else v) for k, v in spec.items()}


_METHOD_FIELDS = ("name", "alpha", "force", "few_shot")


@dataclass(frozen=True)
class MethodConfig:
    """The merge method (from the registry), its parameters, and α: output = θ_B + α·delta.

    In YAML the parameters sit next to ``name`` and ``alpha`` (``method: {name: ties, density: 0.2}``) or under
    ``parameters``; each method declares and validates its own (see :mod:`gradfix_hf.methods`). ``few_shot``
    fine-tunes the merge on the vote samples afterwards (:mod:`gradfix_hf.recipe.few_shot`).
    """

    name: str = "gradfix"
    alpha: float = 1.0
    force: bool = False
    parameters: Mapping[str, Any] = field(default_factory=dict)
    few_shot: Optional[FewShotStage] = None

    @classmethod
    def parse(cls, raw: Any, where: str = "method") -> "MethodConfig":
        if isinstance(raw, cls):
            return raw
        if not isinstance(raw, Mapping):
            raise RecipeError(f"{where}: expected a mapping, got {type(raw).__name__} ({raw!r}).")
        nested = raw.get("parameters") or {}
        if not isinstance(nested, Mapping):
            raise RecipeError(f"{where}.parameters: expected a mapping, got {nested!r}.")
        fields = {k: raw[k] for k in _METHOD_FIELDS if k in raw}
        parameters = {**nested, **{k: v for k, v in raw.items() if k not in _METHOD_FIELDS + ("parameters",)}}
        return cls(**fields, parameters=parameters)

    WHERE = "method"

    def __post_init__(self) -> None:
        if self.few_shot is not None:
            object.__setattr__(self, "few_shot", FewShotStage.parse(self.few_shot, f"{self.WHERE}.few_shot"))
        check_fields(self, self.WHERE)  # name a string, alpha a finite number, force true or false
        if self.name == AUTO:  # the validation split picks mask and α (gradfix_hf/transport/auto.py)
            valid = list(_METHOD_FIELDS) + ["candidates"]
        else:
            valid = list(_METHOD_FIELDS) + get(self.name, "method.name").parameter_names()
        for key in self.parameters:
            if key not in valid:
                raise RecipeError(f"method: unknown key {key!r} for method {self.name!r}."
                                  f"{unknown_key_hint(str(key), valid)}")
        if self.name == AUTO:
            parameters = {"candidates": validate_candidates(self.parameters.get("candidates"))}
        else:
            parameters = get(self.name).validate(self.parameters, "method")
        object.__setattr__(self, "parameters", parameters)
        if self.few_shot is not None and self.name == AUTO:
            raise RecipeError("method.few_shot: with method auto, list few-shot candidates instead (method.candidates:"
                              " [naive, gradfix, few-shot, gradfix+few-shot]; each chooses its lr on validation).")
        if self.few_shot is not None and self.few_shot.lr is None:
            raise RecipeError(f"method.few_shot.lr: method {self.name!r} fine-tunes at a given learning rate (e.g. "
                              "few_shot: {passes: 1, lr: 1e-4}); method auto chooses one on validation.")
        if not self.force and not 0.0 < self.alpha <= 1.0:
            raise RecipeError(
                f"method.alpha: {self.alpha} is outside (0, 1]; set method.force: true (CLI --force) to allow it."
            )

    @property
    def is_auto(self) -> bool:
        return self.name == AUTO

    @property
    def method(self) -> MergeMethod:
        """The registered :class:`~gradfix_hf.methods.MergeMethod` (``gradfix`` for ``auto``, which
        resolves to a GradFix mask before the merge)."""
        return get("gradfix" if self.is_auto else self.name)

    @property
    def mask(self) -> Optional[str]:
        return self.parameters.get("mask")

    @property
    def sign_source(self) -> Optional[str]:
        """Where the sign estimate comes from: ``votes``, ``mean-votes``, ``oracle`` or None."""
        return "votes" if self.is_auto else self.method.sign_source(self.parameters)

    def to_dict(self) -> dict:
        parameters = dict(self.parameters)
        if self.is_auto:
            parameters["candidates"] = [candidate_to_yaml(c) for c in parameters["candidates"]]
        out = {"name": self.name, "alpha": self.alpha, **parameters}
        if self.force:
            out["force"] = True
        if self.few_shot is not None:
            out["few_shot"] = self.few_shot.to_dict()
        return out

