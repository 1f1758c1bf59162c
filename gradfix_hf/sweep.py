"""α selection on a validation split, reported on a separate test split (``gradfix sweep``).

The authors' code picks α on the test set; here α is chosen per method on ``evaluation.split`` and only then
scored on ``evaluation.test_split``. The sweep is stage 2 only: votes are computed (or loaded) once, each
method's delta is computed once, and every α just sets θ_B + α·delta in the loaded model — no gradient pass
and no re-read of the checkpoints per α. Memory: the model plus θ_B's and each method's delta of the merged
tensors (fp32).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch

from .errors import RecipeError
from .merge.streaming import MergeJob, iter_deltas, load_base_model
from .recipe import Recipe
from .transport import accuracy, as_recipe, comparison_jobs, prepare, recipe_votes

logger = logging.getLogger("gradfix_hf")
DEFAULT_ALPHAS = tuple(round(0.1 * i, 1) for i in range(1, 11))


@dataclass
class SweepResult:
    """Validation scores per method and α, the chosen α per method, and test scores at the chosen α."""

    metric: str
    alphas: list[float]
    validation: dict
    test: Optional[dict]
    methods: dict[str, dict] = field(default_factory=dict)
    zero_shot: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"metric": self.metric, "alphas": self.alphas, "validation": self.validation, "test": self.test,
                "zero_shot": self.zero_shot, "methods": self.methods, "warnings": self.warnings}

    def to_markdown(self) -> str:
        test = self.test is not None
        head = f"| method | best α (on validation) | validation {self.metric} |" + (f" test {self.metric} |" if test else "")
        lines = [head, "|---|---|---|" + ("---|" if test else "")]
        rows = [("θ_B zero-shot", None, self.zero_shot)] + [(m["label"], m["best_alpha"], m) for m in self.methods.values()]
        for label, alpha, scores in rows:
            best = scores.get("best_validation", scores.get("validation"))
            cell = "–" if alpha is None else f"{alpha:g}"
            lines.append(f"| {label} | {cell} | {best:.4f} |" + (f" {scores['test']:.4f} |" if test else ""))
        return "\n".join(lines)


def _set_alpha(params: dict, tensors: dict, alpha: float) -> None:
    with torch.no_grad():
        for name, (target, delta) in tensors.items():
            params[name].copy_(target + alpha * delta)


def sweep(recipe: Union[Recipe, str, os.PathLike, dict], *, alphas: Optional[list[float]] = None,
          votes: Optional[Union[str, os.PathLike]] = None, token: Optional[str] = None,
          progress: bool = True) -> SweepResult:
    """Score every method of a single-task recipe over an α grid on the validation split; choose α per method
    there, then report the chosen α's score on the test split (when ``evaluation.test_split`` is set)."""
    recipe = as_recipe(recipe)
    if recipe.evaluation is None:
        raise RecipeError("evaluation: a sweep needs an evaluation section (the validation split that picks α).")
    if len(recipe.resolved_tasks()) != 1:
        raise RecipeError("tasks: a sweep scores one task; a merge of several task vectors has no single split.")
    grid = sorted(set(alphas or recipe.evaluation.alphas or DEFAULT_ALPHAS))
    if any(not a > 0 for a in grid):
        raise RecipeError(f"alphas: every α must be > 0, got {grid}.")
    prepared = prepare(recipe, token=token)
    vote_files = recipe_votes(recipe, [prepared], votes=votes, progress=progress)
    job = MergeJob([prepared.plan], vote_files, recipe.method.method, recipe.method.parameters, 1.0)
    model = load_base_model(prepared.plan)
    params = dict(model.named_parameters())
    objective, validation, test = prepared.objective, prepared.eval_samples, prepared.test_samples
    result = SweepResult(metric="accuracy", alphas=grid,
                         validation={"split": validation.source, "n_samples": len(validation)},
                         test=None if test is None else {"split": test.source, "n_samples": len(test)})
    result.zero_shot = {"validation": accuracy(objective, model, validation)}
    if test is not None:
        result.zero_shot["test"] = accuracy(objective, model, test)
    for key, label, variant in comparison_jobs(prepared, job):
        tensors = {name: (target, delta) for name, target, delta in iter_deltas(variant, progress=progress)}
        scores = {}
        for alpha in grid:
            _set_alpha(params, tensors, alpha)
            scores[alpha] = accuracy(objective, model, validation)
        best = max(grid, key=lambda a: (scores[a], -a))  # ties: the smallest α
        entry: dict[str, Any] = {"label": label, "validation": {str(a): s for a, s in scores.items()},
                                 "best_alpha": best, "best_validation": scores[best]}
        if test is not None:
            _set_alpha(params, tensors, best)
            entry["test"] = accuracy(objective, model, test)
        if len(grid) > 1 and best in (grid[0], grid[-1]):
            side = "smallest" if best == grid[0] else "largest"
            result.warnings.append(f"{label}: the best α ({best:g}) is the grid's {side} value; the optimum may lie "
                                   "outside it (extend evaluation.alphas / --alphas).")
        result.methods[key] = entry
        _set_alpha(params, tensors, 0.0)  # back to θ_B for the next method
    for message in result.warnings:
        logger.warning(message)
    return result
