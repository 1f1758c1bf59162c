"""Run a recipe, the one place that does: prepare → (stage 1) votes → (``auto``: choose) → (stage 2) merge → output.

* :mod:`.prepare`: resolve and check one task vector's models, data and metrics before any gradient.
* :mod:`.recipe_votes`: every task's votes (file, cache or computed; each distinct vote once).
* :mod:`.evaluation`: held-out scores of θ_B, few-shot fine-tuning (:mod:`.few_shot`), naive, the method and the
  oracle, and the same over an α grid; :mod:`.auto` chooses for ``method: auto``.
* :mod:`.run`: ``run_recipe`` / :func:`transport`, writing the output folder (:mod:`.output_folder`, with its
  model card, :mod:`.model_card`) and returning a :class:`TransportResult` (:mod:`.result`).
"""
from .auto import candidate_jobs, choice_table, choose
from .evaluation import (DEFAULT_ALPHAS, alpha_grid, comparison_jobs, evaluate_methods, evaluation_metrics,
                         oracle_jobs, score_jobs)
from .few_shot import few_shot_baseline, few_shot_finetune
from .output_folder import RECIPE_NAME, REPORT_NAME, atomic_folder, push_output_folder, read_report
from .prepare import PreparedRun, prepare
from .inputs import recipe_inputs, resolved_inputs
from .recipe_votes import (check_votes_output, compute_recipe_votes, load_votes_for, recipe_votes, vote_engine_name,
                           vote_key)
from .result import TransportResult
from .run import as_recipe, run_recipe, transport

__all__ = ["transport", "run_recipe", "as_recipe", "prepare", "PreparedRun", "compute_recipe_votes",
           "load_votes_for", "recipe_votes", "vote_engine_name", "vote_key", "TransportResult", "evaluation_metrics",
           "evaluate_methods", "comparison_jobs", "oracle_jobs", "score_jobs", "alpha_grid", "DEFAULT_ALPHAS",
           "candidate_jobs", "choose", "choice_table", "few_shot_baseline", "few_shot_finetune", "RECIPE_NAME",
           "REPORT_NAME", "atomic_folder", "push_output_folder", "read_report", "check_votes_output", "recipe_inputs",
           "resolved_inputs"]
