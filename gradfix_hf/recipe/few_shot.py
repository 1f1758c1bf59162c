"""``method.few_shot``: fine-tune the merge on the vote samples afterwards (a third, optional stage).

Why: a fair comparison gives plain fine-tuning the supervision and the compute that GradFix gets. The vote runs
one forward and backward per sample, so one *pass* over the N vote samples is the vote's compute; ``passes: 10``
is ten times it. The same stage after a GradFix merge ("GradFix, then that short fine-tune") asks whether the mask
and a few gradient steps add up. ``method: auto`` chooses among these candidates like among masks, the learning
rate on the validation split too (``evaluation.few_shot_lrs``); a plain method needs its ``lr``.

In YAML: ``few_shot: 1`` (passes) or ``few_shot: {passes: 1, lr: 1e-4, batch_size: 8}``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from ..errors import RecipeError
from .validation import unknown_key_hint

#: the learning rates ``method: auto`` tries for a few-shot candidate without one (``evaluation.few_shot_lrs``)
DEFAULT_FEW_SHOT_LRS: tuple[float, ...] = (1e-5, 1e-4, 1e-3)
#: candidate shorthands of ``method: auto`` (mask ``none``: θ_B itself, fine-tuned)
FEW_SHOT_CANDIDATES: dict[str, dict] = {
    "few-shot": {"mask": "none", "few_shot": 1},
    "few-shot-10x": {"mask": "none", "few_shot": 10},
    "gradfix+few-shot": {"mask": "gradfix", "few_shot": 1},
}
_KEYS = ("passes", "lr", "batch_size")


def as_number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` (no dot) as a string: such a string becomes its float, anything else stays."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def positive_number(value: Any, where: str) -> float:
    value = as_number(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise RecipeError(f"{where}: a positive number, got {value!r}.")
    return float(value)


@dataclass(frozen=True)
class FewShotStage:
    """AdamW on the transported parameters of the merge: ``passes`` passes over the vote samples in batches of
    ``batch_size`` (each pass costs what the vote costs), at ``lr`` (None: chosen on validation by ``auto``)."""

    passes: int = 1
    lr: Optional[float] = None
    batch_size: int = 8

    @classmethod
    def parse(cls, raw: Any, where: str = "method.few_shot") -> "FewShotStage":
        if isinstance(raw, cls):
            return raw
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw = {"passes": raw}
        if not isinstance(raw, Mapping):
            raise RecipeError(f"{where}: a number of passes over the vote samples (e.g. 1) or a mapping "
                              f"{{passes, lr, batch_size}}, got {raw!r}.")
        for key in raw:
            if key not in _KEYS:
                raise RecipeError(f"{where}: unknown key {key!r}.{unknown_key_hint(str(key), list(_KEYS))}")
        stage = {**raw}
        for key in ("passes", "batch_size"):
            value = stage.get(key, getattr(cls, key))
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RecipeError(f"{where}.{key}: an integer >= 1, got {value!r}.")
        if stage.get("lr") is not None:
            stage["lr"] = positive_number(stage["lr"], f"{where}.lr")
        return cls(**stage)

    def steps(self, n_samples: int) -> int:
        """Optimizer steps: ``passes`` × ⌈N / batch_size⌉ (a pass visits every sample once)."""
        return self.passes * math.ceil(n_samples / min(self.batch_size, max(n_samples, 1)))

    def to_dict(self) -> dict:
        out: dict = {"passes": self.passes}
        if self.lr is not None:
            out["lr"] = self.lr
        if self.batch_size != FewShotStage.batch_size:
            out["batch_size"] = self.batch_size
        return out

    def describe(self) -> str:
        """``few-shot FT (1 pass)`` / ``few-shot FT (10 passes, lr 0.0001)``."""
        lr = f", lr {self.lr:g}" if self.lr is not None else ""
        return f"few-shot FT ({self.passes} pass{'es' if self.passes != 1 else ''}{lr})"


def few_shot_lrs(raw: Any, where: str = "evaluation.few_shot_lrs") -> tuple[float, ...]:
    """The learning-rate grid of the few-shot candidates (sorted, distinct, each > 0)."""
    if raw is None:
        return DEFAULT_FEW_SHOT_LRS
    if not isinstance(raw, (list, tuple)) or not raw:
        raise RecipeError(f"{where}: a non-empty list of positive learning rates, got {raw!r}.")
    return tuple(sorted({positive_number(v, f"{where}[{i}]") for i, v in enumerate(raw)}))
