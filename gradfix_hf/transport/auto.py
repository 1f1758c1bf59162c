"""``method: auto``: the validation split picks the mask variant and α, naive addition included.

Why: on a close pair (a new release that is a continued training of the old one) naive θ_B + τ_A already
transfers well and a vote from a few samples can only lose; on a distant pair the mask is what makes transport
work. Rather than asking users to know which regime they are in, ``auto`` scores every candidate over the
α grid on ``evaluation.split`` — from one vote (majority; computed or loaded once) and one delta per candidate,
no gradient per merge candidate or α (a few-shot candidate trains a copy per learning rate) — and writes the
best. Naive addition is a candidate, so the result is never worse than naive addition *on the validation split*;
a test split (``evaluation.test_path``/``test_split``, which the run then scores; or ``gradfix sweep``) says how
that holds up.

Candidates are GradFix parameter sets (a mask name is shorthand for ``{mask: NAME}``); the default is
naive, gradfix, gradfix with ``no_evidence: keep`` and soft. Ties go to the earlier candidate, then the
smaller α. The fair baselines are candidates too (:mod:`gradfix_hf.recipe.few_shot`): ``few-shot`` (θ_B
fine-tuned on the vote samples with the vote's compute), ``few-shot-10x`` and ``gradfix+few-shot`` (GradFix at its
best α, then that fine-tune); each chooses its learning rate on the validation split, and the chosen one's
fine-tune is written with the merge. ``mean`` (another vote aggregation, hence another gradient pass) and
``oracle`` (needs θ_B^ft: a bound, not a choice) are refused.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional, Sequence

import torch

from ..merge import MergeJob, apply_in_memory
from ..metrics import MetricSet, higher_is_better
from ..plan import load_base_model
from ..recipe import MethodConfig, candidate_key, candidate_label
from ..storage import VotesFile
from .evaluation import alpha_grid, evaluation_metrics, score_jobs
from .few_shot import score_few_shot
from .prepare import PreparedRun

logger = logging.getLogger("gradfix_hf")


def _merge_part(spec: dict) -> dict:
    """A candidate without its few-shot stage: the merge it starts from."""
    return {k: v for k, v in spec.items() if k != "few_shot"}


def candidate_jobs(prepared: PreparedRun, votes: VotesFile) -> list[tuple[str, str, MergeJob]]:
    """(key, label, MergeJob at α = 1) per merge candidate of an auto recipe, in the recipe's order, then the
    merges that few-shot candidates start from when they are not candidates themselves (θ_B, mask ``none``, has
    no α to choose)."""
    candidates = prepared.recipe.method.parameters["candidates"]
    specs = [c for c in candidates if "few_shot" not in c]
    for spec in candidates:
        start = _merge_part(spec)
        if "few_shot" in spec and start["mask"] != "none" and start not in specs:
            specs.append(start)
    return [(candidate_key(c), candidate_label(c), MergeJob.single(prepared.plan, votes, **{"mask": "gradfix", **c}))
            for c in specs]


def score_candidates(prepared: PreparedRun, model: torch.nn.Module, votes: Optional[VotesFile], grid: list[float],
                     metrics: MetricSet, *, test: bool = True, progress: bool = False,
                     test_metrics: Optional[MetricSet] = None, extra_jobs: Sequence = ()
                     ) -> tuple[dict[str, dict], list[str], Optional[dict]]:
    """Every candidate of an auto recipe scored on validation (and at its choice on test): the merges over the α
    grid, each few-shot candidate from its merge at that merge's best α over ``evaluation.few_shot_lrs``. Returns
    the entries by candidate key (then ``extra_jobs``'s, e.g. the oracle), the grid-edge warnings and, for the
    few-shot candidate that scored best on validation, ``{"key", "refinement"}`` (what its fine-tune added: the
    run writes it if that candidate is chosen). ``model`` is θ_B and is θ_B again on return."""
    candidates = prepared.recipe.method.parameters["candidates"]
    merges = candidate_jobs(prepared, votes)
    jobs = {key: job for key, _, job in merges}
    entries, warnings = score_jobs(prepared, model, merges + list(extra_jobs), grid, metrics, test=test,
                                   progress=progress, test_metrics=test_metrics)
    best: Optional[dict] = None
    for spec in candidates:
        if "few_shot" not in spec:
            continue
        start_key = candidate_key(_merge_part(spec))
        alpha = None if spec["mask"] == "none" else entries[start_key]["best_alpha"]
        if alpha is not None:
            apply_in_memory(model, jobs[start_key].replace(alpha=alpha))
        label = "" if alpha is None else f"{entries[start_key]['label']} at α {alpha:g}"
        entry, refinement, edge = score_few_shot(prepared, model, label, spec["few_shot"],
                                                 prepared.recipe.evaluation.few_shot_lrs, metrics, test=test,
                                                 test_metrics=test_metrics)
        if alpha is not None:  # back to θ_B (mask none: θ_B + 0, exactly)
            apply_in_memory(model, jobs[start_key].replace(parameters={"mask": "none"}))
        entry["best_alpha"], entry["start"] = alpha, start_key
        key = candidate_key(spec)
        entries[key] = entry
        warnings += edge
        sign = 1.0 if higher_is_better(next(iter(entry["best_validation_scores"]))) else -1.0
        if best is None or sign * entry["best_validation"] > sign * best["score"]:
            best = {"key": key, "refinement": refinement, "score": entry["best_validation"]}
        del refinement
    wanted = {candidate_key(c) for c in candidates} | {key for key, _, _ in extra_jobs}
    entries = {k: v for k, v in entries.items() if k in wanted}  # a start that is no candidate: its α is in the entry
    return entries, warnings, best


def choose(entries: dict[str, dict], candidates: Sequence[dict]) -> dict:
    """The best candidate on validation (``entries``: the sweep's per-method entries, keyed by candidate key)."""
    order = [candidate_key(c) for c in candidates]
    metric = next(iter(entries[order[0]]["best_validation_scores"]))
    sign = 1.0 if higher_is_better(metric) else -1.0  # NLL and perplexity: the lowest is best
    best_index = max(range(len(order)), key=lambda i: (sign * entries[order[i]]["best_validation"], -i))
    key = order[best_index]
    entry = entries[key]
    choice = {"key": key, "label": entry["label"],
              "parameters": {"mask": "gradfix", **_merge_part(candidates[best_index])},
              "alpha": entry["best_alpha"], "validation": entry["best_validation"],
              "candidates": {k: {"label": entries[k]["label"], "best_alpha": entries[k]["best_alpha"],
                                 "best_validation": entries[k]["best_validation"],
                                 "validation": entries[k]["validation"],
                                 **({"best_lr": entries[k]["best_lr"]} if "best_lr" in entries[k] else {})}
                             for k in order}}
    if "few_shot" in entry:  # the fine-tune's passes and the lr the validation split chose
        choice["few_shot"] = entry["few_shot"]
    return choice


def resolved_method(choice: dict) -> MethodConfig:
    """The GradFix method configuration that ``choice`` stands for (α above 1 is allowed: the grid chose it; θ_B
    fine-tuned alone has no α: 1 with mask ``none``)."""
    alpha = 1.0 if choice["alpha"] is None else float(choice["alpha"])
    return MethodConfig(name="gradfix", alpha=alpha, force=alpha > 1, parameters=dict(choice["parameters"]),
                        few_shot=choice.get("few_shot"))


def choice_margin(choice: dict) -> Optional[dict]:
    """By how much the chosen candidate beat the best other one on validation: ``{"runner_up", "difference"}``
    (the difference in the metric's own direction, ≥ 0), and ``naive_difference`` when naive was not chosen."""
    others = {k: c for k, c in choice["candidates"].items() if k != choice["key"]}
    if not others:
        return None
    sign = 1.0 if higher_is_better(choice["metric"]) else -1.0
    key = max(others, key=lambda k: sign * others[k]["best_validation"])
    margin = {"runner_up": others[key]["label"],
              "difference": sign * (choice["validation"] - others[key]["best_validation"])}
    if "naive" in others:
        margin["naive_difference"] = sign * (choice["validation"] - others["naive"]["best_validation"])
    return margin


def at_alpha(alpha: Optional[float], spelling: str = " at α = ") -> str:
    """`` at α = 0.5`` (how texts place a candidate's α), or nothing for θ_B fine-tuned alone (no α)."""
    return "" if alpha is None else f"{spelling}{alpha:g}"


def choice_table(choice: Optional[dict], metric: str) -> str:
    """Markdown: every candidate's best α and validation score, the chosen one in bold."""
    if not choice:
        return ""
    lines = [f"| candidate | best α | validation {metric} |", "|---|---|---|"]
    for key, c in choice["candidates"].items():
        mark = "**" if key == choice["key"] else ""
        alpha = "–" if c["best_alpha"] is None else f"{c['best_alpha']:g}"
        lines.append(f"| {mark}{c['label']}{mark} | {alpha} | {mark}{c['best_validation']:.4f}{mark} |")
    return "\n".join(lines)


def resolve(prepared: list[PreparedRun], vote_files: list[Optional[VotesFile]], *,
            progress: bool = False) -> tuple[list[PreparedRun], dict, Optional[dict]]:
    """Score the candidates of an auto recipe on its validation split and return the runs with the recipe's
    method replaced by the choice (a plain GradFix method, with its ``few_shot`` stage when it has one), the choice
    (what the report records) and, when a few-shot candidate won, the refinement its fine-tune made (tensors by
    name: what the run writes with the merge instead of fine-tuning again)."""
    head = prepared[0]
    recipe = head.recipe
    grid = alpha_grid(recipe)
    metrics = evaluation_metrics(head)
    entries, warnings, best_few_shot = score_candidates(head, load_base_model(head.plan), vote_files[0], grid,
                                                        metrics, test=False, progress=progress)
    choice = choose(entries, recipe.method.parameters["candidates"])
    refinement = best_few_shot["refinement"] if best_few_shot and best_few_shot["key"] == choice["key"] else None
    del best_few_shot
    choice.update(metric=next(iter(entries[choice["key"]]["best_validation_scores"])),
                  split=head.eval_samples.source, n_samples=len(head.eval_samples), alphas=grid, warnings=warnings)
    choice["margin"] = choice_margin(choice)
    for message in warnings:  # once each; the report keeps them (auto.warnings)
        logger.warning(message)
    resolved = recipe.replace(method=resolved_method(choice))
    return [dataclasses.replace(run, recipe=resolved) for run in prepared], choice, refinement