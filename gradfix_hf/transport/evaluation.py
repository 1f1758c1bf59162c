"""Held-out scores of a prepared run: θ_B zero-shot, few-shot fine-tuning, naive θ_B + α·τ_A, the recipe's
method and the oracle, with every metric of ``evaluation.metrics``; and the same jobs over an α grid.

Scoring over a grid is stage 2 only: each job's delta is computed once, and every α just sets θ_B + α·delta in
the loaded model (no gradient pass, no re-read of the checkpoints per α). ``method: auto`` (:mod:`.auto`) and
``gradfix sweep`` choose α this way; the first metric picks it.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from ..errors import RecipeError
from ..merge import MergeJob, apply_in_memory, iter_deltas
from ..metrics import MetricSet, higher_is_better, score_model
from ..plan import TARGET_FT, load_base_model
from ..recipe import Recipe, candidate_key, candidate_label
from .few_shot import few_shot_baseline
from .prepare import PreparedRun
from .scores import TEST, VALIDATION

DEFAULT_ALPHAS = tuple(round(0.1 * i, 1) for i in range(1, 11))


def evaluation_metrics(prepared: PreparedRun) -> MetricSet:
    """The run's `evaluate` metrics (``evaluation.metrics``, the first picks α; plus exact match for seq2seq)."""
    evaluation = prepared.recipe.evaluation
    return MetricSet(evaluation.metrics, prepared.objective, trust_remote_code=prepared.recipe.trust_remote_code,
                     max_new_tokens=evaluation.max_new_tokens)


def score_row(model_label: str, method: str, alpha: Optional[float], scores: dict) -> dict:
    """One row of an evaluation table: ``score`` is the first metric (the one that picks α), ``scores`` all."""
    return {"model": model_label, "method": method, "alpha": alpha, "score": next(iter(scores.values())),
            "scores": scores}


def comparison_jobs(prepared: PreparedRun, job: MergeJob) -> list[tuple[str, str, MergeJob]]:
    """(key, label, job) of what a held-out comparison scores besides zero-shot θ_B: naive θ_B + α·τ_A, the
    recipe's method (unless it is the naive mask), and the oracle when θ_B^ft is given."""
    mask = job.parameters.get("mask")
    stage = prepared.recipe.method.few_shot if job.refinement is not None else None
    jobs = [("naive", "θ_B + α·τ_A (naive)", MergeJob.single(job.head, None, "naive", job.alpha))]
    if job.method.name != "gradfix":
        label = job.method.pretty_name + (f" + {stage.describe()}" if stage is not None else "")
        jobs.append((job.method.name, label, job))
    elif mask != "naive" or stage is not None:  # labelled with the parameters that differ from the defaults
        defaults = job.method.validate({})
        changed = {k: v for k, v in job.parameters.items() if k == "mask" or v != defaults[k]}
        spec = {**changed, "few_shot": stage} if stage is not None else changed
        jobs.append((mask if stage is None else candidate_key(spec), candidate_label(spec), job))
    if mask != "oracle":
        jobs += oracle_jobs(prepared, job.alpha)
    return jobs


def oracle_jobs(prepared: PreparedRun, alpha: float = 1.0) -> list[tuple[str, str, MergeJob]]:
    """The oracle reference (mask from the sign of τ_B) when θ_B^ft is given, else nothing."""
    if TARGET_FT not in prepared.plan.readers:
        return []
    return [("oracle", "oracle (sign of τ_B)", MergeJob.single(prepared.plan, None, "oracle", alpha))]


def evaluate_methods(prepared: PreparedRun, job: MergeJob, *, split: str = VALIDATION) -> dict:
    """Held-out scores (every metric) of θ_B (zero-shot, with the copied head), the few-shot fine-tuning
    baseline, naive θ_B + α·τ_A, the result and the oracle, on the validation split (``evaluation.split``) or,
    with ``split="test"``, on the test split (``evaluation.test_path``/``test_split``). The table says which
    (``split_role``); ``split`` is where its rows come from."""
    samples = prepared.test_samples if split == TEST else prepared.eval_samples
    if split not in (VALIDATION, TEST) or samples is None:
        raise RecipeError(f"evaluation: no {split} split to score (evaluation.split is the validation split; "
                          "evaluation.test_path or test_split gives a test split).")
    model = load_base_model(prepared.plan)
    objective, metrics = prepared.objective, evaluation_metrics(prepared)
    rows = [score_row("θ_B zero-shot", "zero-shot", None, score_model(objective, model, samples, metrics))]
    few_shot = few_shot_baseline(prepared, model)
    if few_shot is not None:
        rows.append(score_row(few_shot[0], "few-shot", None, score_model(objective, few_shot[1], samples, metrics)))
        del few_shot
    for kind, label, variant in comparison_jobs(prepared, job):
        apply_in_memory(model, variant)
        rows.append(score_row(label, kind, variant.alpha, score_model(objective, model, samples, metrics)))
    return {"metric": next(iter(rows[0]["scores"])), "metrics": list(rows[0]["scores"]), "split": samples.source,
            "split_role": split, "n_samples": len(samples), "rows": rows}


def set_alpha(params: dict, tensors: dict, alpha: float) -> None:
    """Parameters ``params[name]`` = θ_B + α·delta for every (θ_B tensor, delta) in ``tensors``."""
    with torch.no_grad():
        for name, (target, delta) in tensors.items():
            params[name].copy_(target + alpha * delta)


def score_jobs(prepared: PreparedRun, model: torch.nn.Module, jobs: list, grid: list[float], metrics: MetricSet, *,
               test: bool = True, progress: bool = False, test_metrics: Optional[MetricSet] = None
               ) -> tuple[dict[str, dict], list[str]]:
    """Score each (key, label, job) over ``grid`` on the validation split (every metric; the first picks α — the
    highest, or the lowest NLL / perplexity — ties → the smallest α) and, when ``test`` and a test split exist, at
    its best α on the test split (with ``test_metrics`` when given: e.g. NLL alone over the grid, generation metrics
    only at the chosen α). ``model`` is θ_B (loaded once); it is θ_B again on return. Also returns the grid-edge
    warnings."""
    params = dict(model.named_parameters())
    objective, validation = prepared.objective, prepared.eval_samples
    test_samples = prepared.test_samples if test else None
    entries: dict[str, dict] = {}
    warnings: list[str] = []
    bar = tqdm(total=len(jobs) * len(grid), desc="α grid", unit="α", disable=not progress)
    for key, label, variant in jobs:
        tensors = {name: (target, delta) for name, target, delta in iter_deltas(variant, progress=progress)}
        scores = {}
        for alpha in grid:
            bar.set_postfix_str(f"{label} α={alpha:g}", refresh=False)
            set_alpha(params, tensors, alpha)
            scores[alpha] = score_model(objective, model, validation, metrics)
            bar.update()
        primary = next(iter(scores[grid[0]]))
        sign = 1.0 if higher_is_better(primary) else -1.0  # NLL and perplexity: the lowest is best
        best = max(grid, key=lambda a: (sign * scores[a][primary], -a))  # ties: the smallest α
        entry: dict[str, Any] = {"label": label, "validation": {str(a): s[primary] for a, s in scores.items()},
                                 "validation_scores": {str(a): s for a, s in scores.items()},
                                 "best_alpha": best, "best_validation": scores[best][primary],
                                 "best_validation_scores": scores[best]}
        if test_samples is not None:
            set_alpha(params, tensors, best)
            entry["test_scores"] = score_model(objective, model, test_samples, test_metrics or metrics)
            entry["test"] = entry["test_scores"][primary]
        if len(grid) > 1 and best in (grid[0], grid[-1]):
            side = "smallest" if best == grid[0] else "largest"
            warnings.append(f"{label}: the best α ({best:g}) is the grid's {side} value; the optimum may lie "
                            "outside it (extend evaluation.alphas; for a sweep, --alphas or alphas= from Python).")
        entries[key] = entry
        set_alpha(params, tensors, 0.0)  # back to θ_B for the next job
    bar.close()
    return entries, warnings


def alpha_grid(recipe: Recipe, alphas: Optional[list[float]] = None) -> list[float]:
    """The α grid: ``alphas``, else ``evaluation.alphas``, else 0.1, 0.2, …, 1.0 (sorted, each > 0)."""
    grid = sorted(set(alphas or (recipe.evaluation.alphas if recipe.evaluation else None) or DEFAULT_ALPHAS))
    if any(not a > 0 for a in grid):
        raise RecipeError(f"alphas: every α must be > 0, got {grid}.")
    return grid