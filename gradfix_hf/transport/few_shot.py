"""The few-shot fine-tuning baseline θ_B^opt: θ_B trained on the same vote samples D_s that GradFix uses.

As in the paper (Appendix E): AdamW, lr 1e-5, one step on D_s — the fair comparison of "a gradient step"
with "a masked task vector" at the same supervision budget; ``evaluation.few_shot_steps`` allows more steps
and ``few_shot_batch_size`` mini-batches (default: all of D_s in one batch). It trains a deep copy of the
model (θ_B with the fine-tune's copied head), so the caller's model is untouched, and only the parameters
GradFix transports (the voted ones; a copied head or a frozen text tower stay as they are). The loss is the
objective's per-sample loss (``collate`` + ``batch_losses``, the same numbers the votes use), averaged over
the batch, in eval mode (no dropout) and fp32 like the votes; mini-batches are drawn with ``data.seed``, so
the result is deterministic. AdamW's weight decay is torch's default (0.01). It has no α.
"""
from __future__ import annotations

import copy
from typing import Iterator, Optional, Sequence

import torch

from ..errors import RecipeError
from ..objectives import Objective
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
