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

OBJECTIVES = ("sequence-classification", "seq2seq", "causal-lm", "clip-zero-shot", "callable")
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


def read_yaml_mapping(path: Path, what: str, expectation: str) -> dict:
    """A YAML file that must hold a mapping, or a RecipeError naming the file and what is wrong."""
    if not path.is_file():
        raise RecipeError(f"{path}: {what} file not found.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, Mapping):
        raise RecipeError(f"{path}: {expectation}.")
    return dict(raw)


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
    """θ_B (target), θ_A (source), θ_A^ft (source_finetuned) and optionally θ_B^ft (target_finetuned, oracle).

    Merges list their task vectors under ``tasks`` instead; ``source`` is then the default source of each task.
    """

    target: ModelRef
    source: Optional[ModelRef] = None
    source_finetuned: Optional[ModelRef] = None
    target_finetuned: Optional[ModelRef] = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None and not isinstance(value, ModelRef):
                object.__setattr__(self, f.name, ModelRef.parse(value, f"models.{f.name}"))


@dataclass(frozen=True)
class DataConfig:
    """The few labelled samples D_s: where they come from, which columns hold what, and how many per class.

    ``selection`` chooses the K rows of a class: ``random`` (seeded, no model load) or, on θ_B's embeddings of
    a seeded pool of at most ``selection_pool`` rows per class, ``herding``, ``k-medoids`` or ``k-center``.
    """

    path: str
    name: Optional[str] = None
    split: str = "train"
    revision: Optional[str] = None
    text_column: str = "text"
    text_pair_column: Optional[str] = None
    label_column: str = "label"
    samples_per_class: int = 8
    seed: int = 0
    selection: str = "random"
    selection_pool: Optional[int] = 1000
    prompt: str = "{text}"
    label_words: Optional[dict] = None
    max_length: int = 128
    image_column: str = "image"  # image objectives (clip-zero-shot): an Image feature, or image file paths
    templates: Optional[list] = None  # clip-zero-shot prompt templates, "{}" or "{label}" = the class name

    def __post_init__(self) -> None:
        if not isinstance(self.samples_per_class, int) or self.samples_per_class < 1:
            raise RecipeError(f"data.samples_per_class: must be a positive integer, got {self.samples_per_class!r}.")
        from .selection import canonical_selection  # how the K samples are chosen (gradfix_hf/selection.py)

        object.__setattr__(self, "selection", canonical_selection(self.selection, "data.selection"))
        pool = self.selection_pool
        if pool is not None and (isinstance(pool, bool) or not isinstance(pool, int) or pool < self.samples_per_class):
            raise RecipeError(f"data.selection_pool: rows embedded per class, an integer >= data.samples_per_class "
                              f"({self.samples_per_class}) or null for every row, got {pool!r}.")
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise RecipeError(f"data.max_length: must be an integer >= 2, got {self.max_length!r}.")
        if "{text}" not in self.prompt:
            raise RecipeError(f"data.prompt: must contain '{{text}}', got {self.prompt!r}.")
        if self.label_words is not None and not isinstance(self.label_words, Mapping):
            raise RecipeError("data.label_words: must map each label to its verbalisation, e.g. {0: negative}.")
        if self.templates is not None:
            from .objectives.clip_zero_shot import template_error  # the objective owns the placeholder rule

            if isinstance(self.templates, str) or not isinstance(self.templates, (list, tuple)) or not self.templates:
                raise RecipeError(f"data.templates: a non-empty list of prompt templates, got {self.templates!r}.")
            for template in self.templates:
                if template_error(template):
                    raise RecipeError(f"data.templates: {template_error(template)}, e.g. 'a photo of a {{}}.'.")
            object.__setattr__(self, "templates", list(self.templates))
        if not isinstance(self.image_column, str) or not self.image_column:
            raise RecipeError(f"data.image_column: the name of the image column, got {self.image_column!r}.")


@dataclass(frozen=True)
class EvaluationConfig:
    """A held-out split scored for θ_B, naive θ_B + α·τ_A and the result. Fields default to ``data``'s.

    ``gradfix sweep`` picks α on ``split`` (the validation split) over ``alphas`` and reports the chosen α on
    ``test_split`` (from ``test_path`` or the same data set), never choosing on the test split.

    ``metrics`` are `evaluate` metrics (``accuracy``, ``f1`` and ``exact_match`` ship with the package and load
    offline; other names are loaded from the Hub when the recipe is read); the first one picks α. The few-shot
    fine-tuning baseline (θ_B trained on the vote samples, :mod:`gradfix_hf.few_shot`) runs
    ``few_shot_steps`` AdamW steps (0: no baseline) at ``few_shot_lr`` on batches of ``few_shot_batch_size``
    (default: all vote samples in one batch).
    """

    split: str = "validation"
    path: Optional[str] = None
    name: Optional[str] = None
    revision: Optional[str] = None
    max_samples: Optional[int] = None
    test_split: Optional[str] = None
    test_path: Optional[str] = None
    alphas: Optional[list] = None
    metrics: tuple = ("accuracy", "f1")
    few_shot_steps: int = 1
    few_shot_lr: float = 1e-5
    few_shot_batch_size: Optional[int] = None

    def __post_init__(self) -> None:
        from .metrics.loading import check_metric_names  # evaluate itself is imported only for non-built-in names

        object.__setattr__(self, "metrics", check_metric_names(self.metrics, "evaluation.metrics"))
        for key, low in (("few_shot_steps", 0), ("few_shot_batch_size", 1)):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise RecipeError(f"evaluation.{key}: an integer >= {low}, got {value!r}.")
        if self.few_shot_steps is None:
            raise RecipeError("evaluation.few_shot_steps: an integer >= 0 (0 disables the few-shot baseline).")
        lr = self.few_shot_lr
        if isinstance(lr, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                lr = float(lr)
            except ValueError:
                pass
            object.__setattr__(self, "few_shot_lr", lr)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
            raise RecipeError(f"evaluation.few_shot_lr: a positive number, got {lr!r}.")
        if self.alphas is not None:
            if (not isinstance(self.alphas, (list, tuple)) or not self.alphas
                    or any(isinstance(a, bool) or not isinstance(a, (int, float)) or not a > 0 or a != a
                           or a == float("inf") for a in self.alphas)):
                raise RecipeError(f"evaluation.alphas: a non-empty list of positive numbers, got {self.alphas!r}.")
            object.__setattr__(self, "alphas", sorted({float(a) for a in self.alphas}))
        if self.test_path is not None and self.test_split is None:
            object.__setattr__(self, "test_split", "test")


_METHOD_FIELDS = ("name", "alpha", "force")


@dataclass(frozen=True)
class MethodConfig:
    """The merge method (from the registry), its parameters, and α: output = θ_B + α·delta.

    In YAML the parameters sit next to ``name`` and ``alpha`` (``method: {name: ties, density: 0.2}``) or under
    ``parameters``; each method declares and validates its own (see ``gradfix_hf.merge.methods``).
    """

    name: str = "gradfix"
    alpha: float = 1.0
    force: bool = False
    parameters: Mapping[str, Any] = field(default_factory=dict)

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

    def __post_init__(self) -> None:
        from .auto import AUTO, validate_candidates
        from .merge.methods import get

        if not isinstance(self.name, str):
            raise RecipeError(f"method.name: must be a string, got {self.name!r}.")
        if self.name == AUTO:  # the validation split picks mask and α (gradfix_hf/auto.py)
            valid = list(_METHOD_FIELDS) + ["candidates"]
        else:
            valid = list(_METHOD_FIELDS) + get(self.name, "method.name").parameter_names()
        for key in self.parameters:
            if key not in valid:
                raise RecipeError(f"method: unknown key {key!r} for method {self.name!r}.{_closest(str(key), valid)}")
        if self.name == AUTO:
            parameters = {"candidates": validate_candidates(self.parameters.get("candidates"))}
        else:
            parameters = get(self.name).validate(self.parameters, "method")
        object.__setattr__(self, "parameters", parameters)
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)):
            raise RecipeError(f"method.alpha: must be a number, got {self.alpha!r}.")
        if self.alpha != self.alpha or self.alpha in (float("inf"), float("-inf")):
            raise RecipeError(f"method.alpha: must be finite, got {self.alpha!r}.")
        if not self.force and not 0.0 < self.alpha <= 1.0:
            raise RecipeError(
                f"method.alpha: {self.alpha} is outside (0, 1]; set method.force: true (CLI --force) to allow it."
            )

    @property
    def is_auto(self) -> bool:
        return self.name == "auto"

    @property
    def method(self):
        """The registered :class:`~gradfix_hf.merge.methods.MergeMethod` (``gradfix`` for ``auto``, which
        resolves to a GradFix mask before the merge)."""
        from .merge.methods import get

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
            parameters["candidates"] = [c["mask"] if list(c) == ["mask"] else dict(c) for c in parameters["candidates"]]
        out = {"name": self.name, "alpha": self.alpha, **parameters}
        if self.force:
            out["force"] = True
        return out


@dataclass(frozen=True)
class TaskConfig:
    """One task vector of a merge: its fine-tune (and source, when it differs from ``models.source``), the
    samples that vote for it, an optional precomputed votes file, its weight and its oracle fine-tune."""

    source_finetuned: ModelRef
    name: Optional[str] = None
    source: Optional[ModelRef] = None
    target_finetuned: Optional[ModelRef] = None
    data: Optional[DataConfig] = None
    votes: Optional[str] = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        for key in ("source_finetuned", "source", "target_finetuned"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, ModelRef):
                object.__setattr__(self, key, ModelRef.parse(value, f"tasks.{key}"))
        if self.data is not None and not isinstance(self.data, DataConfig):
            object.__setattr__(self, "data", _build(DataConfig, self.data, "tasks.data"))
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or self.weight != self.weight:
            raise RecipeError(f"tasks.weight: must be a number, got {self.weight!r}.")


@dataclass(frozen=True)
class ResolvedTask:
    """A task with every default filled in: the models of one task vector, its data and votes."""

    name: str
    models: ModelsConfig
    data: Optional[DataConfig]
    votes: Optional[str]
    weight: float
    where: str


@dataclass(frozen=True)
class LoraExportConfig:
    """``output.as_lora``: write a LoRA adapter for θ_B instead of full weights, by truncated SVD of each masked
    delta: a fixed ``rank``, or per module the smallest rank keeping ``energy`` of the delta's squared Frobenius
    norm (with ``rank`` as a cap when both are given). YAML: ``as_lora: 16`` or ``as_lora: {energy: 0.9}``."""

    rank: Optional[int] = None
    energy: Optional[float] = None

    def __post_init__(self) -> None:
        if self.rank is None and self.energy is None:
            raise RecipeError("output.as_lora: give a rank (e.g. {rank: 16}), an energy threshold (e.g. "
                              "{energy: 0.9}), or both.")
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1):
            raise RecipeError(f"output.as_lora.rank: must be a positive integer, got {self.rank!r}.")
        if self.energy is not None and (isinstance(self.energy, bool) or not isinstance(self.energy, (int, float))
                                        or not 0.0 < self.energy <= 1.0):
            raise RecipeError(f"output.as_lora.energy: must be a number in (0, 1], got {self.energy!r}.")


@dataclass(frozen=True)
class OutputConfig:
    """Where and how the transported model is written (full weights, or a LoRA adapter with ``as_lora``)."""

    path: Optional[str] = None
    dtype: Optional[str] = None
    max_shard_size: Union[int, str] = "5GB"
    as_lora: Optional[LoraExportConfig] = None

    def __post_init__(self) -> None:
        if self.dtype is not None:
            _check_choice(self.dtype, DTYPES, "output.dtype")
        parse_size(self.max_shard_size)
        if self.as_lora is not None and not isinstance(self.as_lora, LoraExportConfig):
            raw = {"rank": self.as_lora} if isinstance(self.as_lora, int) and not isinstance(self.as_lora, bool) \
                else self.as_lora
            object.__setattr__(self, "as_lora", _build(LoraExportConfig, raw, "output.as_lora"))


@dataclass(frozen=True)
class Recipe:
    """A complete GradFix transport job. Build it from YAML with :meth:`from_yaml` and run it with :meth:`run`."""

    models: ModelsConfig
    data: Optional[DataConfig] = None
    objective: str = "sequence-classification"
    method: MethodConfig = field(default_factory=MethodConfig)
    tasks: Optional[tuple] = None
    evaluation: Optional[EvaluationConfig] = None
    output: OutputConfig = field(default_factory=OutputConfig)
    votes: Optional[str] = None
    votes_cache: Optional[str] = None
    allow_pickle: bool = False
    trust_remote_code: bool = False
    loss_fn: Optional[Callable] = field(default=None, compare=False, repr=False)
    model_class: Optional[str] = None
    vote_engine: str = "auto"
    vote_batch_size: int = 16

    def __post_init__(self) -> None:
        specs = {"models": ModelsConfig, "data": DataConfig, "evaluation": EvaluationConfig, "output": OutputConfig}
        for key, cls in specs.items():
            value = getattr(self, key)
            if value is not None and not isinstance(value, cls):
                object.__setattr__(self, key, _build(cls, value, key))
        object.__setattr__(self, "method", MethodConfig.parse(self.method))
        if self.tasks is not None:
            if isinstance(self.tasks, (str, bytes, Mapping)) or not isinstance(self.tasks, (list, tuple)):
                raise RecipeError(f"tasks: expected a list of task vectors, got {self.tasks!r}.")
            object.__setattr__(self, "tasks", tuple(_build(TaskConfig, t, f"tasks[{i}]")
                                                    for i, t in enumerate(self.tasks)))
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
        if self.method.is_auto and self.evaluation is None:
            raise RecipeError("method: 'auto' picks the mask and α on a held-out split: add an evaluation section "
                              "(evaluation.split, and evaluation.alphas for the grid).")
        self._check_tasks()

    def _check_tasks(self) -> None:
        method, models = self.method.method, self.models
        if self.tasks is not None:
            for key in ("source_finetuned", "target_finetuned"):
                if getattr(models, key) is not None:
                    raise RecipeError(f"models.{key}: with a tasks list, set it per task (tasks[i].{key}).")
            if self.votes is not None and not method.shared_vote:
                raise RecipeError("votes: with a tasks list, give each task its own votes file (tasks[i].votes).")
            if self.evaluation is not None and len(self.tasks) > 1:
                raise RecipeError("evaluation: held-out scores are computed for single-task transports only; a "
                                  "merge of several task vectors has no single task to score.")
        elif models.source_finetuned is None:
            raise RecipeError("models.source_finetuned: required (θ_A fine-tuned), unless the recipe lists tasks.")
        tasks = self.resolved_tasks()
        if self.evaluation is not None and tasks[0].data is None:
            raise RecipeError("evaluation: needs a data section to know the columns and labels.")
        method.check_tasks(len(tasks), "tasks" if self.tasks is not None else "models")
        if self.method.parameters.get("normalize") and sum(t.weight for t in tasks) == 0:
            raise RecipeError("tasks: method.normalize divides by the sum of the task weights, which is 0.")
        names = [t.name for t in tasks]
        for name in names:
            if names.count(name) > 1:
                raise RecipeError(f"tasks: the name {name!r} is used twice; task names must be unique.")
        source = self.method.sign_source
        for task in tasks:
            if source == "oracle" and task.models.target_finetuned is None:
                raise RecipeError(f"{task.where}.target_finetuned: mask 'oracle' needs θ_B fine-tuned on the task.")
        if source in ("votes", "mean-votes"):
            voting = tasks[:1] if method.shared_vote else tasks
            for task in voting:
                if task.votes is None and task.data is None:
                    raise RecipeError(f"data: method {self.name_and_mask} needs labelled samples for "
                                      f"{task.where} (or a votes file).")
            if method.shared_vote and self.votes is None:
                for task in tasks[1:]:
                    if task.data != tasks[0].data:
                        raise RecipeError(f"{task.where}.data: method {self.method.name!r} votes once for every "
                                          f"source, on one data set; it differs from {tasks[0].where}'s.")

    @property
    def needs_votes(self) -> bool:
        return self.method.sign_source in ("votes", "mean-votes")

    @property
    def name_and_mask(self) -> str:
        mask = self.method.mask
        return f"{self.method.name!r}" + (f" (mask {mask!r})" if mask else "")

    def resolved_tasks(self) -> list[ResolvedTask]:
        """The task vectors with defaults filled in (one implicit task when the recipe has no tasks list)."""
        models = self.models
        if self.tasks is None:
            return [ResolvedTask("task0", models, self.data, self.votes, 1.0, "models")]
        out = []
        for i, task in enumerate(self.tasks):
            where = f"tasks[{i}]"
            source = task.source or models.source
            if source is None:
                raise RecipeError(f"{where}.source: missing (θ_A of this task); set it or models.source.")
            task_models = ModelsConfig(target=models.target, source=source, source_finetuned=task.source_finetuned,
                                       target_finetuned=task.target_finetuned)
            votes = task.votes or (self.votes if i == 0 else None)
            out.append(ResolvedTask(task.name or f"task{i}", task_models, task.data or self.data, votes,
                                    float(task.weight), where))
        return out

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
        raw = read_yaml_mapping(path, "recipe", "a recipe must be a YAML mapping with at least 'models'")
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
            if isinstance(obj, MethodConfig):
                return obj.to_dict()
            if dataclasses.is_dataclass(obj):
                return {f.name: clean(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                        if f.name != "loss_fn" and getattr(obj, f.name) is not None}
            if isinstance(obj, Mapping):
                return {k: clean(v) for k, v in obj.items()}
            if isinstance(obj, (list, tuple)):
                return [clean(v) for v in obj]
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
