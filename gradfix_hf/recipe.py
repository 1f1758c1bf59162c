"""The declarative recipe: which models, which data, which method, where the output goes.

A recipe is plain YAML (mergekit style) parsed into frozen dataclasses. Unknown keys are rejected with the
closest valid name, so a typo never silently falls back to a default. The CLI and the Python API both run
recipes (:meth:`Recipe.run`).
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import yaml

from .errors import RecipeError

OBJECTIVES = ("sequence-classification", "seq2seq", "causal-lm", "callable")
MASKS = ("gradfix", "mean", "oracle", "naive")
NO_EVIDENCE_POLICIES = ("drop", "keep")
DTYPES = ("float32", "float16", "bfloat16")
VOTE_ENGINES = ("auto", "batched", "reference")


_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30,
               "TIB": 2**40}


def parse_size(size: Union[int, str]) -> int:
    """'5GB' / '200MB' / '1.5GiB' / 1000 → bytes (the ``output.max_shard_size`` syntax)."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B)\s*", size.upper()) if isinstance(size, str) else None
    if not match or float(match.group(1)) <= 0:
        raise RecipeError(f"output.max_shard_size: cannot read {size!r} (use e.g. 5GB, 200MB or a positive byte count).")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def _closest(name: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    return f" Did you mean {match[0]!r}?" if match else f" Valid keys: {', '.join(sorted(valid))}."


def _check_choice(value: Any, choices: tuple[str, ...], where: str) -> None:
    if value not in choices:
        hint = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
        extra = f" Did you mean {hint[0]!r}?" if hint else ""
        raise RecipeError(f"{where}: {value!r} is not one of {', '.join(choices)}.{extra}")


def _build(cls: type, raw: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys with a suggestion."""
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, Mapping):
        raise RecipeError(f"{where}: expected a mapping, got {type(raw).__name__} ({raw!r}).")
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in raw:
        if key not in names:
            raise RecipeError(f"{where}: unknown key {key!r}.{_closest(str(key), names)}")
    try:
        return cls(**raw)
    except TypeError as exc:  # a required key is missing
        raise RecipeError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class ModelRef:
    """A model: a local folder or a Hub repo id, with optional revision (branch, tag, commit) and subfolder."""

    path: str
    revision: Optional[str] = None
    subfolder: Optional[str] = None

    @classmethod
    def parse(cls, raw: Any, where: str) -> "ModelRef":
        if isinstance(raw, (str, os.PathLike)):
            return cls(path=str(raw))
        ref = _build(cls, raw, where)
        if not isinstance(ref.path, str) or not ref.path:
            raise RecipeError(f"{where}.path: a local folder or a Hub id is required.")
        return ref

    def __str__(self) -> str:
        text = self.path + (f"/{self.subfolder}" if self.subfolder else "")
        return text + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class ModelsConfig:
    """θ_A (source), θ_A^ft (source_finetuned), θ_B (target) and optionally θ_B^ft (target_finetuned, oracle)."""

    source: ModelRef
    source_finetuned: ModelRef
    target: ModelRef
    target_finetuned: Optional[ModelRef] = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None and not isinstance(value, ModelRef):
                object.__setattr__(self, f.name, ModelRef.parse(value, f"models.{f.name}"))


@dataclass(frozen=True)
class DataConfig:
    """The few labelled samples D_s: where they come from, which columns hold what, and how many per class."""

    path: str
    name: Optional[str] = None
    split: str = "train"
    revision: Optional[str] = None
    text_column: str = "text"
    text_pair_column: Optional[str] = None
    label_column: str = "label"
    samples_per_class: int = 8
    seed: int = 0
    prompt: str = "{text}"
    label_words: Optional[dict] = None
    max_length: int = 128

    def __post_init__(self) -> None:
        if not isinstance(self.samples_per_class, int) or self.samples_per_class < 1:
            raise RecipeError(f"data.samples_per_class: must be a positive integer, got {self.samples_per_class!r}.")
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise RecipeError(f"data.max_length: must be an integer >= 2, got {self.max_length!r}.")
        if "{text}" not in self.prompt:
            raise RecipeError(f"data.prompt: must contain '{{text}}', got {self.prompt!r}.")
        if self.label_words is not None and not isinstance(self.label_words, Mapping):
            raise RecipeError("data.label_words: must map each label to its verbalisation, e.g. {0: negative}.")


@dataclass(frozen=True)
class EvaluationConfig:
    """A held-out split scored for θ_B, naive θ_B + α·τ_A and the result. Fields default to ``data``'s."""

    split: str = "validation"
    path: Optional[str] = None
    name: Optional[str] = None
    revision: Optional[str] = None
    max_samples: Optional[int] = None


@dataclass(frozen=True)
class MethodConfig:
    """How τ_A is masked and scaled: θ_B + α·(m ⊙ τ_A)."""

    mask: str = "gradfix"
    alpha: float = 1.0
    no_evidence: str = "drop"
    force: bool = False

    def __post_init__(self) -> None:
        _check_choice(self.mask, MASKS, "method.mask")
        _check_choice(self.no_evidence, NO_EVIDENCE_POLICIES, "method.no_evidence")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)):
            raise RecipeError(f"method.alpha: must be a number, got {self.alpha!r}.")
        if self.alpha != self.alpha or self.alpha in (float("inf"), float("-inf")):
            raise RecipeError(f"method.alpha: must be finite, got {self.alpha!r}.")
        if not self.force and not 0.0 < self.alpha <= 1.0:
            raise RecipeError(
                f"method.alpha: {self.alpha} is outside (0, 1]; set method.force: true (CLI --force) to allow it."
            )


@dataclass(frozen=True)
class OutputConfig:
    """Where and how the transported model is written."""

    path: Optional[str] = None
    dtype: Optional[str] = None
    max_shard_size: Union[int, str] = "5GB"

    def __post_init__(self) -> None:
        if self.dtype is not None:
            _check_choice(self.dtype, DTYPES, "output.dtype")
        parse_size(self.max_shard_size)


@dataclass(frozen=True)
class Recipe:
    """A complete GradFix transport job. Build it from YAML with :meth:`from_yaml` and run it with :meth:`run`."""

    models: ModelsConfig
    data: Optional[DataConfig] = None
    objective: str = "sequence-classification"
    method: MethodConfig = field(default_factory=MethodConfig)
    evaluation: Optional[EvaluationConfig] = None
    output: OutputConfig = field(default_factory=OutputConfig)
    votes: Optional[str] = None
    allow_pickle: bool = False
    trust_remote_code: bool = False
    loss_fn: Optional[Callable] = field(default=None, compare=False, repr=False)
    model_class: Optional[str] = None
    vote_engine: str = "auto"
    vote_batch_size: int = 16

    def __post_init__(self) -> None:
        specs = {"models": ModelsConfig, "data": DataConfig, "method": MethodConfig,
                 "evaluation": EvaluationConfig, "output": OutputConfig}
        for key, cls in specs.items():
            value = getattr(self, key)
            if value is not None and not isinstance(value, cls):
                object.__setattr__(self, key, _build(cls, value, key))
        _check_choice(self.objective, OBJECTIVES, "objective")
        _check_choice(self.vote_engine, VOTE_ENGINES, "vote_engine")
        if isinstance(self.vote_batch_size, bool) or not isinstance(self.vote_batch_size, int) or self.vote_batch_size < 1:
            raise RecipeError(f"vote_batch_size: must be a positive integer, got {self.vote_batch_size!r}.")
        if self.vote_engine == "batched" and self.objective == "callable":
            raise RecipeError("vote_engine: 'batched' needs per-sample losses from one batched forward, which a "
                              "user 'callable' loss does not give; use 'auto' or 'reference'.")
        if self.objective == "callable" and self.loss_fn is None:
            raise RecipeError("objective: 'callable' needs a loss_fn (Python API: Recipe(..., loss_fn=fn)).")
        if self.loss_fn is not None and not callable(self.loss_fn):
            raise RecipeError("loss_fn: must be callable as loss_fn(model, sample) -> scalar tensor.")
        if self.method.mask == "oracle" and self.models.target_finetuned is None:
            raise RecipeError("method.mask: 'oracle' needs models.target_finetuned (θ_B fine-tuned on the task).")
        if self.needs_votes and self.votes is None and self.data is None:
            raise RecipeError(f"data: method.mask {self.method.mask!r} needs labelled samples (or a votes file).")
        if self.evaluation is not None and self.data is None:
            raise RecipeError("evaluation: needs a data section to know the columns and labels.")

    @property
    def needs_votes(self) -> bool:
        return self.method.mask in ("gradfix", "mean")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, loss_fn: Optional[Callable] = None) -> "Recipe":
        if not isinstance(raw, Mapping):
            raise RecipeError(f"recipe: expected a mapping, got {type(raw).__name__} ({raw!r}).")
        fields = {k: v for k, v in raw.items() if k != "loss_fn"}
        if loss_fn is not None:  # passed at construction so the 'callable' objective's check sees it
            fields["loss_fn"] = loss_fn
        return _build(cls, fields, "recipe")

    @classmethod
    def from_yaml(cls, path: Union[str, os.PathLike], *, loss_fn: Optional[Callable] = None,
                  overrides: Optional[Mapping[str, Any]] = None) -> "Recipe":
        """Read a YAML recipe; ``overrides`` (e.g. ``{"method": {"alpha": 0.5}}``) are merged in before validation."""
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"{path}: recipe file not found.")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise RecipeError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(raw, Mapping):
            raise RecipeError(f"{path}: a recipe must be a YAML mapping with at least 'models'.")
        for key, value in (overrides or {}).items():
            merge = isinstance(value, Mapping) and isinstance(raw.get(key), Mapping)
            raw[key] = {**raw[key], **value} if merge else value
        try:
            return cls.from_dict(raw, loss_fn=loss_fn)
        except RecipeError as exc:
            raise RecipeError(f"{path}: {exc}") from None

    def to_dict(self) -> dict:
        """The recipe as plain data (what is copied into the output folder)."""

        def clean(obj: Any) -> Any:
            if dataclasses.is_dataclass(obj):
                return {f.name: clean(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                        if f.name != "loss_fn" and getattr(obj, f.name) is not None}
            if isinstance(obj, Mapping):
                return {k: clean(v) for k, v in obj.items()}
            if isinstance(obj, os.PathLike):  # Python API callers may pass pathlib.Path objects
                return os.fspath(obj)
            return obj

        return clean(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **changes: Any) -> "Recipe":
        return dataclasses.replace(self, **changes)

    def run(self, output_dir: Optional[str] = None, **kwargs: Any):
        """Run the recipe; see :func:`gradfix_hf.transport.run_recipe`."""
        from .transport import run_recipe

        return run_recipe(self, output_dir=output_dir, **kwargs)
