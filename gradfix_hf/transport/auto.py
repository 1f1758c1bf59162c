"""``method: auto``: the validation split picks the mask variant and α, naive addition included.

Why: on a close pair (a new release that is a continued training of the old one) naive θ_B + τ_A already
transfers well and a vote from a few samples can only lose; on a distant pair the mask is what makes transport
work. Rather than asking users to know which regime they are in, ``auto`` scores every candidate over the
α grid on ``evaluation.split`` — from one vote (majority; computed or loaded once) and one delta per candidate,
no gradient per candidate or α — and writes the best. Naive addition is a candidate, so the result is never
worse than naive addition *on the validation split*; a test split (``evaluation.test_path``/``test_split``, which
the run then scores; or ``gradfix sweep``) says how that holds up.

Candidates are GradFix parameter sets (a mask name is shorthand for ``{mask: NAME}``); the default is
naive, gradfix, gradfix with ``no_evidence: keep`` and soft. Ties go to the earlier candidate, then the
smaller α. ``mean`` (another vote aggregation, hence another gradient pass) and ``oracle`` (needs θ_B^ft: a
bound, not a choice) are refused.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional, Sequence

from ..merge import MergeJob
from ..metrics import higher_is_better
from ..plan import load_base_model
from ..recipe import MethodConfig, candidate_key, candidate_label
from ..storage import VotesFile
from .evaluation import alpha_grid, evaluation_metrics, score_jobs
from .prepare import PreparedRun

logger = logging.getLogger("gradfix_hf")


def candidate_jobs(prepared: PreparedRun, votes: VotesFile) -> list[tuple[str, str, MergeJob]]:
    """(key, label, MergeJob at α = 1) per candidate of an auto recipe, in the recipe's order."""
    candidates = prepared.recipe.method.parameters["candidates"]
    return [(candidate_key(c), candidate_label(c), MergeJob.single(prepared.plan, votes, **{"mask": "gradfix", **c}))
            for c in candidates]


def choose(entries: dict[str, dict], candidates: Sequence[dict]) -> dict:
    """The best candidate on validation (``entries``: the sweep's per-method entries, keyed by candidate key)."""
    order = [candidate_key(c) for c in candidates]
    metric = next(iter(entries[order[0]]["best_validation_scores"]))
    sign = 1.0 if higher_is_better(metric) else -1.0  # NLL and perplexity: the lowest is best
    best_index = max(range(len(order)), key=lambda i: (sign * entries[order[i]]["best_validation"], -i))
    key = order[best_index]
    entry = entries[key]
    return {"key": key, "label": entry["label"], "parameters": {"mask": "gradfix", **candidates[best_index]},
            "alpha": entry["best_alpha"], "validation": entry["best_validation"],
            "candidates": {k: {"label": entries[k]["label"], "best_alpha": entries[k]["best_alpha"],
                               "best_validation": entries[k]["best_validation"],
                               "validation": entries[k]["validation"]} for k in order}}


def resolved_method(choice: dict) -> MethodConfig:
    """The GradFix method configuration that ``choice`` stands for (α above 1 is allowed: the grid chose it)."""
    return MethodConfig(name="gradfix", alpha=float(choice["alpha"]), force=choice["alpha"] > 1,
                        parameters=dict(choice["parameters"]))


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


def choice_table(choice: Optional[dict], metric: str) -> str:
    """Markdown: every candidate's best α and validation score, the chosen one in bold."""
    if not choice:
        return ""
    lines = [f"| candidate | best α | validation {metric} |", "|---|---|---|"]
    for key, c in choice["candidates"].items():
        mark = "**" if key == choice["key"] else ""
        lines.append(f"| {mark}{c['label']}{mark} | {c['best_alpha']:g} | {mark}{c['best_validation']:.4f}{mark} |")
    return "\n".join(lines)


def resolve(prepared: list[PreparedRun], vote_files: list[Optional[VotesFile]], *,
            progress: bool = False) -> tuple[list[PreparedRun], dict]:
    """Score the candidates of an auto recipe on its validation split and return the runs with the recipe's
    method replaced by the choice (a plain GradFix method), and the choice (what the report records)."""
    head = prepared[0]
    recipe = head.recipe
    grid = alpha_grid(recipe)
    metrics = evaluation_metrics(head)
    entries, warnings = score_jobs(head, load_base_model(head.plan), candidate_jobs(head, vote_files[0]), grid,
                                   metrics, test=False, progress=progress)
    choice = choose(entries, recipe.method.parameters["candidates"])
    choice.update(metric=next(iter(entries[choice["key"]]["best_validation_scores"])),
                  split=head.eval_samples.source, n_samples=len(head.eval_samples), alphas=grid, warnings=warnings)
    choice["margin"] = choice_margin(choice)
    for message in warnings:  # once each; the report keeps them (auto.warnings)
        logger.warning(message)
    resolved = recipe.replace(method=resolved_method(choice))
    return [dataclasses.replace(run, recipe=resolved) for run in prepared], choice