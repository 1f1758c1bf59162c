"""α selection on a validation split, reported on a separate test split (``gradfix sweep``).

Checking a sweep's outputs (:func:`check_sweep_outputs`) imports no model library; :func:`sweep` imports them
when it runs.

The authors' code picks α on the test set; here α is chosen per method on ``evaluation.split`` and only then
scored on ``evaluation.test_split``. The sweep is stage 2 only: votes are computed (or loaded) once, each
method's delta is computed once, and every α just sets θ_B + α·delta in the loaded model — no gradient pass
and no re-read of the checkpoints per α. Memory: the model plus θ_B's and each method's delta of the merged
tensors (fp32); the few-shot fine-tuning baseline briefly adds a trained copy of the model and its AdamW state.

Every method and baseline is scored with every metric of ``evaluation.metrics`` (through `evaluate`, see
:mod:`gradfix_hf.metrics`); the first metric picks α. Baselines sit in the same table: θ_B zero-shot, the
few-shot fine-tuning of θ_B on the vote samples (:mod:`gradfix_hf.transport.few_shot`; no α), naive θ_B + α·τ_A (its
own best α), the recipe's method and the oracle when ``models.target_finetuned`` is given.
"""
from __future__ import annotations

import json as json_module
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from .errors import GradFixError, OutputError, RecipeError
from .recipe import Recipe
from .storage import atomic_file, check_destination, check_not_an_input, real_path
from .transport import as_recipe, recipe_inputs

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("gradfix_hf")
PathLike = Union[str, os.PathLike]
#: what marks each output file as a sweep's (only such a file is replaced with ``overwrite``)
PNG_SOFTWARE = "gradfix_hf sweep"
MARKDOWN_HEAD = "| method | best α (on validation) |"


def _is_sweep_json(path: Path) -> bool:
    try:
        data = json_module.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and {"metric", "alphas", "methods"} <= set(data)


def _is_sweep_markdown(path: Path) -> bool:
    try:
        return Path(path).read_text(errors="replace").startswith(MARKDOWN_HEAD)
    except OSError:
        return False


def _is_sweep_png(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(8192)
    except OSError:
        return False
    return head.startswith(b"\x89PNG") and PNG_SOFTWARE.encode() in head


RECOGNISERS = {"json": _is_sweep_json, "markdown": _is_sweep_markdown, "plot": _is_sweep_png}


def check_sweep_outputs(recipe: Union[Recipe, PathLike, dict], outputs: dict[str, Optional[PathLike]], *,
                        overwrite: bool = False, votes: Optional[PathLike] = None) -> None:
    """Before any work: the sweep's output files (``{"json": …, "markdown": …, "plot": …}``) are distinct, none is
    an input of the recipe, and none replaces anything but a previous sweep output (with ``overwrite``)."""
    paths = {kind: Path(path) for kind, path in outputs.items() if path is not None}
    if len({real_path(path) for path in paths.values()}) < len(paths):
        raise OutputError(f"sweep outputs: {', '.join(map(str, paths.values()))} must be different files.")
    inputs = recipe_inputs(as_recipe(recipe), votes)
    for kind, path in paths.items():
        check_not_an_input(path, inputs, f"sweep {kind}")
        check_destination(path, overwrite=overwrite, recognise=RECOGNISERS[kind], folder=False, where=f"sweep {kind}")


def require_matplotlib() -> tuple[Any, Any]:
    """matplotlib's ``Figure`` and Agg canvas (no pyplot, no display), or a clear error naming the extra."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise GradFixError("plotting a sweep needs matplotlib: pip install 'gradfix_hf[plot]'.") from None
    return Figure, FigureCanvasAgg


@dataclass
class SweepResult:
    """Validation scores per method and α, the chosen α per method, test scores at the chosen α, and the
    baselines without α (θ_B zero-shot, few-shot fine-tuning). ``metric`` is the one that picks α; every
    entry also carries all of ``metrics`` (``*_scores``)."""

    metric: str
    alphas: list[float]
    validation: dict
    test: Optional[dict]
    methods: dict[str, dict] = field(default_factory=dict)
    zero_shot: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    few_shot: Optional[dict] = None
    chosen: Optional[dict] = None  # method: auto — the candidate and α the validation split picked

    def to_dict(self) -> dict:
        return {"metric": self.metric, "metrics": self.metrics, "alphas": self.alphas, "validation": self.validation,
                "test": self.test, "zero_shot": self.zero_shot, "few_shot": self.few_shot, "methods": self.methods,
                "chosen": self.chosen, "warnings": self.warnings}

    def _rows(self) -> list[tuple[str, Optional[float], dict, Optional[dict]]]:
        """(label, α, validation scores, test scores) of every baseline and method, in table order."""
        rows = [(self.zero_shot["label"], None, self.zero_shot["validation_scores"], self.zero_shot.get("test_scores"))]
        if self.few_shot is not None:
            rows.append((self.few_shot["label"], None, self.few_shot["validation_scores"],
                         self.few_shot.get("test_scores")))
        rows += [(m["label"], m["best_alpha"], m["best_validation_scores"], m.get("test_scores"))
                 for m in self.methods.values()]
        return rows

    def to_markdown(self) -> str:
        splits = ["validation"] + (["test"] if self.test is not None else [])
        columns = [f"{split} {name}" for split in splits for name in self.metrics]
        lines = ["| method | best α (on validation) | " + " | ".join(columns) + " |",
                 "|---|---|" + "---|" * len(columns)]
        for label, alpha, validation, test in self._rows():
            cells = [f"{validation[name]:.4f}" for name in self.metrics]
            if test is not None:
                cells += [f"{test[name]:.4f}" for name in self.metrics]
            lines.append(f"| {label} | {'–' if alpha is None else f'{alpha:g}'} | " + " | ".join(cells) + " |")
        if self.chosen is not None:
            from .transport.auto import at_alpha

            lines += ["", f"method: auto chooses {self.chosen['label']}{at_alpha(self.chosen['alpha'])} (best "
                          f"validation {self.metric} {self.chosen['validation']:.4f})."]
        return "\n".join(lines)

    def plot(self, path: PathLike, *, overwrite: bool = False) -> Path:
        """A PNG of the validation score (the metric that picks α) against α per method, the chosen α starred,
        with horizontal lines for θ_B zero-shot and the few-shot fine-tuning baseline. Needs ``gradfix_hf[plot]``."""
        Figure, FigureCanvasAgg = require_matplotlib()
        figure = Figure(figsize=(6.4, 4.4), dpi=120)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        for entry in self.methods.values():
            if "best_lr" in entry:  # a few-shot candidate: no curve over α, its best lr's score
                axes.axhline(entry["best_validation"], label=f"{entry['label']}: {entry['best_validation']:.4f}",
                             linestyle="-.")
                continue
            (line,) = axes.plot(self.alphas, [entry["validation"][str(a)] for a in self.alphas], marker="o",
                                label=f"{entry['label']} (best α {entry['best_alpha']:g})")
            axes.plot([entry["best_alpha"]], [entry["best_validation"]], marker="*", markersize=14,
                      color=line.get_color(), linestyle="none")
        for entry, style in ((self.zero_shot, dict(color="gray", linestyle="--")),
                             (self.few_shot, dict(color="black", linestyle=":"))):
            if entry is not None:
                axes.axhline(entry["validation"], label=f"{entry['label']}: {entry['validation']:.4f}", **style)
        axes.set_xlabel("α")
        axes.set_ylabel(f"validation {self.metric}")
        axes.set_title(f"{self.metric} on {self.validation['split']} ({self.validation['n_samples']} samples)",
                       fontsize="medium")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
        figure.tight_layout()
        return atomic_file(path, lambda tmp: figure.savefig(tmp, format="png", metadata={"Software": PNG_SOFTWARE}),
                           overwrite=overwrite, recognise=_is_sweep_png, where="sweep plot")

    def save(self, json: Optional[PathLike] = None, markdown: Optional[PathLike] = None,
             plot: Optional[PathLike] = None, *, overwrite: bool = False) -> list[Path]:
        """Write the result as JSON, the table as markdown and the plot as PNG, each where asked (atomically;
        ``overwrite`` replaces only previous sweep outputs). Returns the paths written."""
        written = []
        if json is not None:
            text = json_module.dumps(self.to_dict(), indent=2) + "\n"
            written.append(atomic_file(json, lambda tmp: tmp.write_text(text), overwrite=overwrite,
                                       recognise=_is_sweep_json, where="sweep json"))
        if markdown is not None:
            table = self.to_markdown() + "\n"
            written.append(atomic_file(markdown, lambda tmp: tmp.write_text(table), overwrite=overwrite,
                                       recognise=_is_sweep_markdown, where="sweep markdown"))
        if plot is not None:
            written.append(self.plot(plot, overwrite=overwrite))
        return written



def sweep(recipe: Union[Recipe, str, os.PathLike, dict], *, alphas: Optional[list[float]] = None,
          votes: Optional[Union[str, os.PathLike]] = None, token: Optional[str] = None,
          progress: bool = True, force: bool = False) -> SweepResult:
    """Score every method of a single-task recipe over an α grid on the validation split; choose α per method
    there, then report the chosen α's score on the test split (when ``evaluation.test_split`` is set). The
    baselines without α (θ_B zero-shot, few-shot fine-tuning) are scored on both splits. Each grid-edge warning
    is logged once (``gradfix_hf`` logger) and kept in ``SweepResult.warnings``."""
    recipe = as_recipe(recipe)
    if recipe.evaluation is None:
        raise RecipeError("evaluation: a sweep needs an evaluation section (the validation split that picks α).")
    if len(recipe.resolved_tasks()) != 1:
        raise RecipeError("tasks: a sweep scores one task; a merge of several task vectors has no single split.")
    if recipe.method.few_shot is not None:
        raise RecipeError("method.few_shot: a sweep scores merges over α; to compare fine-tuning after the merge, list "
                          "few-shot candidates under method: auto (e.g. candidates: [naive, gradfix, "
                          "gradfix+few-shot]).")
    from .runtime import threads_for_model  # the model libraries: only once the recipe can be swept
    from .transport import alpha_grid, check_few_shot_stage, prepare

    grid = alpha_grid(recipe, alphas)
    prepared = prepare(recipe, token=token)
    check_few_shot_stage([prepared])
    with threads_for_model(prepared.parameter_count):  # tiny models: one thread (gradfix_hf/runtime/threads.py)
        return _sweep_prepared(recipe, prepared, grid, votes=votes, progress=progress, force=force)


def _sweep_prepared(recipe: Recipe, prepared: Any, grid: list[float], *, votes: Optional[PathLike], progress: bool,
                    force: bool) -> SweepResult:
    """The sweep of a prepared run: votes, then every job over the grid (see :func:`sweep`)."""
    from .merge import MergeJob
    from .metrics import score_model
    from .plan import load_base_model
    from .transport import (choose, comparison_jobs, evaluation_metrics, few_shot_baseline, oracle_jobs, recipe_votes,
                            score_candidates, score_jobs)

    metrics = evaluation_metrics(prepared)
    vote_files = recipe_votes(recipe, [prepared], votes=votes, progress=progress, force=force)
    model = load_base_model(prepared.plan)
    objective, validation, test = prepared.objective, prepared.eval_samples, prepared.test_samples

    def baseline(label: str, scored_model: torch.nn.Module) -> dict:
        entry: dict[str, Any] = {"label": label,
                                 "validation_scores": score_model(objective, scored_model, validation, metrics)}
        if test is not None:
            entry["test_scores"] = score_model(objective, scored_model, test, metrics)
        return entry

    zero_shot = baseline("θ_B zero-shot", model)
    primary = next(iter(zero_shot["validation_scores"]))
    result = SweepResult(metric=primary, metrics=list(zero_shot["validation_scores"]), alphas=grid,
                         validation={"split": validation.source, "n_samples": len(validation)},
                         test=None if test is None else {"split": test.source, "n_samples": len(test)})
    result.zero_shot = _with_primary(zero_shot, primary)
    few_shot = few_shot_baseline(prepared, model)  # trains a copy: the sweep's model stays θ_B
    if few_shot is not None:
        label, tuned = few_shot
        ev = recipe.evaluation
        result.few_shot = {**_with_primary(baseline(label, tuned), primary), "steps": ev.few_shot_steps,
                           "lr": ev.few_shot_lr, "batch_size": ev.few_shot_batch_size or len(prepared.examples),
                           "n_samples": len(prepared.examples)}
        del few_shot, tuned
    if recipe.method.is_auto:  # every candidate (and the oracle as a reference), then the choice
        result.methods, result.warnings, _ = score_candidates(prepared, model, vote_files[0], grid, metrics,
                                                              progress=progress, extra_jobs=oracle_jobs(prepared))
    else:
        jobs = comparison_jobs(prepared, MergeJob([prepared.plan], vote_files, recipe.method.method,
                                                  recipe.method.parameters, 1.0))
        result.methods, result.warnings = score_jobs(prepared, model, jobs, grid, metrics, progress=progress)
    if recipe.method.is_auto:
        result.chosen = choose(result.methods, recipe.method.parameters["candidates"])
    for message in result.warnings:
        logger.warning(message)
    return result


def _with_primary(entry: dict, primary: str) -> dict:
    """A baseline entry with its ``validation``/``test`` score in the metric that picks α."""
    out = {**entry, "validation": entry["validation_scores"][primary]}
    if "test_scores" in entry:
        out["test"] = entry["test_scores"][primary]
    return out