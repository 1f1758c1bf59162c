"""The ``models`` section and the ``tasks`` list: which checkpoints play θ_A, θ_A^ft, θ_B and θ_B^ft."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import RecipeError
from .data import DataConfig
from .validation import build, check_fields, paths_as_strings


@dataclass(frozen=True)
class ModelRef:
    """A model: a local folder or a Hub repo id, with optional revision (branch, tag, commit) and subfolder."""

    path: str
    revision: Optional[str] = None
    subfolder: Optional[str] = None

    WHERE = "model"  # a model's messages name its keys from where it sits (models.target.path), see build
    EXPECTED = "a local folder or a Hub id, or a mapping with path (and revision, subfolder)"

    def __post_init__(self) -> None:
        paths_as_strings(self, ("path",))
        check_fields(self, self.WHERE)
        if not self.path:
            raise RecipeError(f"{self.WHERE}.path: a local folder or a Hub id is required.")

    @classmethod
    def parse(cls, raw: Any, where: str) -> "ModelRef":
        return build(cls, {"path": raw} if isinstance(raw, (str, os.PathLike)) else raw, where)

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

    WHERE = "models"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None and not isinstance(value, ModelRef):
                object.__setattr__(self, f.name, ModelRef.parse(value, f"models.{f.name}"))
        check_fields(self, self.WHERE)




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

    WHERE = "tasks"  # built as tasks[i]: build names the task's index in its messages

    def __post_init__(self) -> None:
        for key in ("source_finetuned", "source", "target_finetuned"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, ModelRef):
                object.__setattr__(self, key, ModelRef.parse(value, f"{self.WHERE}.{key}"))
        if self.data is not None and not isinstance(self.data, DataConfig):
            object.__setattr__(self, "data", build(DataConfig, self.data, f"{self.WHERE}.data"))
        paths_as_strings(self, ("votes",))
        check_fields(self, self.WHERE)  # the weight: a finite number


@dataclass(frozen=True)
class ResolvedTask:
    """A task with every default filled in: the models of one task vector, its data and votes."""

    name: str
    models: ModelsConfig
    data: Optional[DataConfig]
    votes: Optional[str]
    weight: float
    where: str

