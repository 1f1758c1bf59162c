"""The few-shot fine-tuning baseline θ_B^opt: θ_B trained on the same vote samples D_s that GradFix uses.

As in the paper (Appendix E): AdamW, lr 1e-5, one step on D_s — the fair comparison of "a gradient step"
with "a masked task vector" at the same supervision budget; ``evaluation.few_shot_steps`` allows more steps
and ``few_shot_batch_size`` mini-batches (default: all of D_s in one batch). It trains a deep copy of the
model (θ_B with the fine-tune's copied head), so the caller's model is untouched, and only the parameters
GradFix transports (the voted ones; a copied head or a frozen text tower stay as they are). The loss is the
objective's per-sample loss (``collate`` + ``batch_losses``, the same numbers the votes use), averaged over
the batch, in eval mode (no dropout) and fp32 like the votes; mini-batches are drawn with ``data.seed``, so
the result is deterministic. AdamW's weight decay is torch's default (0.01). It has no α.

The same fine-tune is also a stage after the merge (``method.few_shot``, :mod:`gradfix_hf.recipe.few_shot`): the
merge's model is fine-tuned for a number of passes over the vote samples (one pass costs what the vote costs) and
what that added to each transported tensor is written with the merge (``MergeJob.refinement``); ``method: auto``
scores such candidates at every learning rate of ``evaluation.few_shot_lrs`` (:func:`score_few_shot`).
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Iterator, Optional, Sequence

import torch

from ..errors import RecipeError
from ..merge import MergeJob, apply_in_memory
from ..metrics import MetricSet, higher_is_better, score_model
from ..objectives import Objective
from ..plan import load_base_model
from ..recipe import FewShotStage
from .prepare import PreparedRun


def few_shot_label(steps: int) -> str:
    """The baseline's row label (its lr and batch size are in the sweep's JSON and the recipe)."""
    return f"θ_B few-shot FT ({steps} step{'s' if steps != 1 else ''})"


def accumulate_mean_loss(objective: Objective, model: torch.nn.Module, examples: Sequence[dict],
                         micro_batch_size: Optional[int] = None) -> None:
    """Backpropagate the mean per-sample loss of ``examples`` into ``.grad``, ``micro_batch_size`` samples per
    forward (the same gradient as one forward of them all, whose activations would not fit for an LLM)."""
    size = len(examples) if not micro_batch_size else micro_batch_size
    for start in range(0, len(examples), size):
        chunk = list(examples[start:start + size])
        if objective.supports_batching:
            batch = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v
                     for k, v in objective.collate(chunk).items()}
            total = objective.batch_losses(model, batch).sum()
        else:
            total = torch.stack([objective.loss(model, example) for example in chunk]).sum()
        (total / len(examples)).backward()


def _batches(count: int, size: int, seed: int) -> Iterator[list[int]]:
    """Index batches of ``size`` over passes of seeded permutations (the last batch of a pass may be smaller)."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(count, generator=generator).tolist()
        for start in range(0, count, size):
            yield order[start:start + size]


def few_shot_finetune(model: torch.nn.Module, objective: Objective, examples: Sequence[dict],
                      parameter_names: Sequence[str], *, steps: int = 1, lr: float = 1e-5,
                      batch_size: Optional[int] = None, seed: int = 0,
                      micro_batch_size: Optional[int] = None) -> torch.nn.Module:
    """A fine-tuned deep copy of ``model``: ``steps`` AdamW steps on ``examples`` over ``parameter_names``, each
    step's batch forwarded ``micro_batch_size`` samples at a time (gradient accumulation: the same step)."""
    if not examples:
        raise RecipeError("evaluation.few_shot_steps: the few-shot baseline needs the vote samples (a data section).")
    if steps < 1:
        raise RecipeError(f"evaluation.few_shot_steps: must be >= 1 to fine-tune, got {steps}.")
    tuned = copy.deepcopy(model)
    params = dict(tuned.named_parameters())
    missing = [n for n in parameter_names if n not in params]
    if missing:
        raise RecipeError(f"few-shot baseline: the model has no parameter(s) {missing[:3]}.")
    trained = set(parameter_names)
    for name, param in params.items():
        param.requires_grad_(name in trained)
    optimizer = torch.optim.AdamW([params[n] for n in parameter_names], lr=lr)
    size = len(examples) if batch_size is None else min(batch_size, len(examples))
    batches = _batches(len(examples), size, seed)
    tuned.eval()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        accumulate_mean_loss(objective, tuned, [examples[i] for i in next(batches)], micro_batch_size)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return tuned.eval()


def few_shot_baseline(prepared: PreparedRun, model: torch.nn.Module) -> Optional[tuple[str, torch.nn.Module]]:
    """(label, fine-tuned copy) for a prepared run (:class:`~gradfix_hf.transport.PreparedRun`) whose recipe
    asks for the baseline (``evaluation.few_shot_steps`` > 0) and which has vote samples; else None."""
    evaluation = prepared.recipe.evaluation
    if evaluation is None or not evaluation.few_shot_steps or not prepared.examples:
        return None
    tuned = few_shot_finetune(model, prepared.objective, prepared.examples, prepared.plan.transported,
                              steps=evaluation.few_shot_steps, lr=evaluation.few_shot_lr,
                              batch_size=evaluation.few_shot_batch_size, seed=prepared.task.data.seed,
                              micro_batch_size=prepared.recipe.vote_batch_size)
    return few_shot_label(evaluation.few_shot_steps), tuned


def check_few_shot_stage(prepared: list[PreparedRun]) -> None:
    """Before any long work: a few-shot stage (``method.few_shot`` or a few-shot candidate of ``auto``) needs one
    task and its vote samples."""
    method = prepared[0].recipe.method
    staged = method.few_shot is not None or (method.is_auto and any(
        "few_shot" in c for c in method.parameters["candidates"]))
    if not staged:
        return
    if len(prepared) > 1:
        raise RecipeError("method.few_shot: fine-tuning the merge needs one task's vote samples; this recipe has "
                          f"{len(prepared)} tasks.")
    if not prepared[0].examples:
        raise RecipeError("method.few_shot: fine-tuning the merge needs the vote samples (a data section).")


def finetune_merge(prepared: PreparedRun, model: torch.nn.Module, stage: FewShotStage,
                   lr: float) -> torch.nn.Module:
    """A fine-tuned copy of ``model`` (a merge in memory): ``stage.passes`` passes over the vote samples at ``lr``."""
    return few_shot_finetune(model, prepared.objective, prepared.examples, prepared.plan.transported,
                             steps=stage.steps(len(prepared.examples)), lr=lr, batch_size=stage.batch_size,
                             seed=prepared.task.data.seed, micro_batch_size=prepared.recipe.vote_batch_size)


@torch.no_grad()
def refinement_of(start: torch.nn.Module, tuned: torch.nn.Module, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """What the fine-tune added to each transported tensor (fp32): ``MergeJob.refinement``."""
    before, after = dict(start.named_parameters()), dict(tuned.named_parameters())
    return {name: (after[name].detach().float() - before[name].detach().float()) for name in names}


def stage_refinement(prepared: PreparedRun, job: MergeJob) -> dict[str, torch.Tensor]:
    """The refinement of a recipe's ``method.few_shot`` (its lr given): the merge in memory, then fine-tuned."""
    stage = prepared.recipe.method.few_shot
    model = load_base_model(prepared.plan)
    apply_in_memory(model, job)
    return refinement_of(model, finetune_merge(prepared, model, stage, stage.lr), prepared.plan.transported)


def score_few_shot(prepared: PreparedRun, model: torch.nn.Module, label: str, stage: FewShotStage,
                   lrs: Sequence[float], metrics: MetricSet, *, test: bool = True,
                   test_metrics: Optional[MetricSet] = None) -> tuple[dict, dict[str, torch.Tensor], list[str]]:
    """A few-shot candidate fine-tuned from ``model`` (its start, untouched) at each lr (``stage.lr`` alone when
    given) and scored on the validation split: (the entry, shaped like :func:`~.evaluation.score_jobs`'s with its
    ``best_lr``; the refinement at that lr; grid-edge warnings). Ties go to the smaller lr."""
    grid = [stage.lr] if stage.lr is not None else sorted(lrs)
    scores, best, best_tuned = {}, None, None
    for lr in grid:
        tuned = finetune_merge(prepared, model, stage, lr)
        scores[lr] = score_model(prepared.objective, tuned, prepared.eval_samples, metrics)
        primary = next(iter(scores[lr]))
        sign = 1.0 if higher_is_better(primary) else -1.0
        if best is None or sign * scores[lr][primary] > sign * scores[best][primary]:
            best, best_tuned = lr, tuned
        del tuned
    primary = next(iter(scores[best]))
    chosen = dataclasses.replace(stage, lr=best)
    entry = {"label": f"{label} + {chosen.describe()}" if label else f"θ_B {chosen.describe()}",
             "validation": {str(lr): s[primary] for lr, s in scores.items()},
             "validation_scores": {str(lr): s for lr, s in scores.items()}, "few_shot": chosen.to_dict(),
             "best_lr": best, "best_validation": scores[best][primary], "best_validation_scores": scores[best]}
    if test and prepared.test_samples is not None:
        entry["test_scores"] = score_model(prepared.objective, best_tuned, prepared.test_samples,
                                           test_metrics or metrics)
        entry["test"] = entry["test_scores"][primary]
    warnings = []
    if len(grid) > 1 and best in (grid[0], grid[-1]):
        side = "smallest" if best == grid[0] else "largest"
        warnings.append(f"{entry['label']}: the best lr ({best:g}) is the grid's {side} value; the optimum may lie "
                        "outside it (extend evaluation.few_shot_lrs).")
    return entry, refinement_of(model, best_tuned, prepared.plan.transported), warnings
