"""The declarative recipe: which models, which data, which method, where the output goes.

A recipe is plain YAML (mergekit style) parsed into frozen dataclasses, one per section (:mod:`.models`,
:mod:`.data`, :mod:`.method`, :mod:`.output`). Unknown keys are rejected with the closest valid name, so a typo
never silently falls back to a default. A recipe is data: it holds no behaviour and loads no model; the CLI and
the Python API run one with :func:`gradfix_hf.transport`.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import yaml

from ..errors import RecipeError
from .data import DataConfig, EvaluationConfig, metric_objective_error
from .method import MethodConfig
from .models import ModelsConfig, ResolvedTask, TaskConfig
from .output import OutputConfig
from .validation import RECIPE_EXPECTATION, build, check_choice, check_fields, paths_as_strings, read_yaml_mapping

OBJECTIVES = ("sequence-classification", "seq2seq", "causal-lm", "clip-zero-shot", "callable", "sft")
#: held-out metrics when the recipe names none: class metrics, or the NLL and perplexity of an SFT objective
DEFAULT_METRICS = {"sft": ("nll", "perplexity")}
VOTE_ENGINES = ("auto", "batched", "reference")
#: θ_B's dtype during the vote: ``auto`` = θ_B's stored float dtype on a GPU, float32 on a CPU
VOTE_DTYPES = ("auto", "float32", "bfloat16", "float16")
#: how several processes share a vote: ``samples`` (θ_B replicated, samples split), ``fsdp`` (θ_B sharded with
#: FSDP2, samples split too); ``auto`` = fsdp under ``accelerate launch --use_fsdp``, else samples
VOTE_SHARDINGS = ("auto", "samples", "fsdp")
#: permute θ_A and θ_A^ft into θ_B's basis before the vote and the merge (gradfix_hf/plan/alignment.py)
ALIGNMENTS = ("none", "weight-matching")


@dataclass(frozen=True)
class Recipe:
    """A complete GradFix transport job. Build it from YAML with :meth:`from_yaml`; run it with
    :func:`gradfix_hf.transport` (CLI: ``gradfix run``)."""

    models: ModelsConfig
    data: Optional[DataConfig] = None
    objective: str = "sequence-classification"
    method: MethodConfig = field(default_factory=MethodConfig)
    tasks: Optional[tuple[TaskConfig, ...]] = None
    evaluation: Optional[EvaluationConfig] = None
    output: OutputConfig = field(default_factory=OutputConfig)
    votes: Optional[str] = None
    votes_cache: Optional[str] = None
    allow_pickle: bool = False
    trust_remote_code: bool = False
    loss_fn: Optional[Callable] = field(default=None, compare=False, repr=False)
    #: the YAML file the recipe was read from (an input no output may replace; not part of the recipe's data)
    source_file: Optional[str] = field(default=None, compare=False, repr=False)
    model_class: Optional[str] = None
    vote_engine: str = "auto"
    vote_batch_size: int = 16
    vote_dtype: str = "auto"
    vote_sharding: str = "auto"
    #: processes sharing one copy of θ_B in an FSDP2 vote (0: the processes of one node)
    vote_shard_size: int = 0
    #: recompute each block in the vote's backward instead of keeping its activations (long rows)
    vote_gradient_checkpointing: bool = False
    #: ``weight-matching``: θ_A's hidden units and heads permuted onto θ_B's before τ_A is taken (a new release
    #: trained from scratch); ``none``: coordinates as they are
    align: str = "none"

    WHERE = ""  # top-level keys are named bare: trust_remote_code, vote_batch_size

    def __post_init__(self) -> None:
        specs = {"models": ModelsConfig, "data": DataConfig, "evaluation": EvaluationConfig, "output": OutputConfig}
        for key, cls in specs.items():
            value = getattr(self, key)
            if value is not None and not isinstance(value, cls):
                object.__setattr__(self, key, build(cls, value, key))
        object.__setattr__(self, "method", MethodConfig.parse(self.method))
        if self.tasks is not None:
            if isinstance(self.tasks, (str, bytes, Mapping)) or not isinstance(self.tasks, (list, tuple)):
                raise RecipeError(f"tasks: expected a list of task vectors, got {self.tasks!r}.")
            object.__setattr__(self, "tasks", tuple(build(TaskConfig, t, f"tasks[{i}]")
                                                    for i, t in enumerate(self.tasks)))
        if self.loss_fn is not None and not callable(self.loss_fn):
            raise RecipeError("loss_fn: must be callable as loss_fn(model, sample) -> scalar tensor.")
        paths_as_strings(self, ("votes", "votes_cache"))
        check_fields(self, self.WHERE)  # trust_remote_code and allow_pickle: true or false, nothing else
        check_choice(self.objective, OBJECTIVES, "objective")
        check_choice(self.vote_engine, VOTE_ENGINES, "vote_engine")
        check_choice(self.vote_dtype, VOTE_DTYPES, "vote_dtype")
        check_choice(self.vote_sharding, VOTE_SHARDINGS, "vote_sharding")
        check_choice(self.align, ALIGNMENTS, "align")
        if isinstance(self.vote_shard_size, bool) or not isinstance(self.vote_shard_size, int) \
                or self.vote_shard_size < 0:
            raise RecipeError(f"vote_shard_size: must be a positive integer (or 0: the processes of one node), got "
                              f"{self.vote_shard_size!r}.")
        if self.vote_sharding == "fsdp" and (self.vote_engine == "reference" or self.objective == "callable"):
            raise RecipeError("vote_sharding: 'fsdp' forms per-sample gradients with the batched engine; it cannot "
                              "run the one-sample reference loop (vote_engine: reference, or a callable loss).")
        if self.vote_batch_size < 1:
            raise RecipeError(f"vote_batch_size: must be a positive integer, got {self.vote_batch_size!r}.")
        if self.vote_engine == "batched" and self.objective == "callable":
            raise RecipeError("vote_engine: 'batched' needs per-sample losses from one batched forward, which a "
                              "user 'callable' loss does not give; use 'auto' or 'reference'.")
        if self.objective == "callable" and self.loss_fn is None:
            raise RecipeError("objective: 'callable' needs a loss_fn (Python API: Recipe(..., loss_fn=fn)).")
        if self.objective == "sft":
            self._sft_defaults()
        elif any(d is not None and (d.tokenizer or d.chat_template) for d in self._data_sections().values()):
            raise RecipeError("data.tokenizer / data.chat_template: only objective 'sft' renders rows with another "
                              "tokenizer or chat template.")
        if self.evaluation is not None:
            problem = metric_objective_error(self.objective, self.evaluation.metrics)
            if problem:
                raise RecipeError(f"evaluation.metrics: {problem}")
        if self.method.is_auto and self.evaluation is None:
            raise RecipeError("method: 'auto' picks the mask and α on a held-out split: add an evaluation section "
                              "(evaluation.split, and evaluation.alphas for the grid).")
        self._check_tasks()

    def _sft_defaults(self) -> None:
        """An SFT recipe votes on ``data.rows`` rows, and is scored by NLL and perplexity unless it says otherwise."""
        for where, data in self._data_sections().items():
            if data is not None and data.rows is None:
                raise RecipeError(f"{where}.rows: objective 'sft' votes on N rows of the data (not K per class); "
                                  "set data.rows, e.g. 32.")
        if self.evaluation is not None and self.evaluation.metrics == EvaluationConfig.metrics:
            object.__setattr__(self, "evaluation", dataclasses.replace(self.evaluation,
                                                                       metrics=DEFAULT_METRICS["sft"]))

    def _data_sections(self) -> dict:
        """``{where: DataConfig or None}`` for the recipe's data and each task's."""
        return {"data": self.data, **{f"tasks[{i}].data": t.data for i, t in enumerate(self.tasks or ())}}

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
        fields = {k: v for k, v in raw.items() if k not in ("loss_fn", "source_file")}
        if loss_fn is not None:  # passed at construction so the 'callable' objective's check sees it
            fields["loss_fn"] = loss_fn
        return build(cls, fields, "recipe")

    @classmethod
    def from_yaml(cls, path: Union[str, os.PathLike], *, loss_fn: Optional[Callable] = None,
                  overrides: Optional[Mapping[str, Any]] = None) -> "Recipe":
        """Read a YAML recipe; ``overrides`` (e.g. ``{"method": {"alpha": 0.5}}``) are merged in before validation."""
        path = Path(path)
        raw = read_yaml_mapping(path, "recipe", RECIPE_EXPECTATION)
        for key, value in (overrides or {}).items():
            merge = isinstance(value, Mapping) and isinstance(raw.get(key), Mapping)
            raw[key] = {**raw[key], **value} if merge else value
        try:
            return cls.from_dict(raw, loss_fn=loss_fn).replace(source_file=str(path))
        except RecipeError as exc:
            raise RecipeError(f"{path}: {exc}") from None

    def to_dict(self) -> dict:
        """The recipe as plain data (what is copied into the output folder)."""

        def clean(obj: Any) -> Any:
            if isinstance(obj, MethodConfig):
                return obj.to_dict()
            if dataclasses.is_dataclass(obj):
                return {f.name: clean(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                        if f.name not in ("loss_fn", "source_file") and getattr(obj, f.name) is not None}
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

