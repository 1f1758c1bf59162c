"""Run a recipe, the one place that does: prepare → (stage 1) votes → (``auto``: choose) → (stage 2) merge → output.

* :mod:`.prepare`: resolve and check one task vector's models, data and metrics before any gradient.
* :mod:`.recipe_votes`: every task's votes (file, cache or computed; each distinct vote once).
* :mod:`.evaluation`: held-out scores of θ_B, few-shot fine-tuning (:mod:`.few_shot`), naive, the method and the
  oracle, and the same over an α grid; :mod:`.auto` chooses for ``method: auto``.
* :mod:`.run`: ``run_recipe`` / :func:`transport`, writing the output folder (:mod:`.output_folder`, with its
  model card, :mod:`.model_card`) and returning a :class:`TransportResult` (:mod:`.result`).
* :mod:`.inputs` and :mod:`.destination`: what a recipe reads, and where its output may go — checked before anything
  heavy is imported; :mod:`.scores`: which split a table scores; :mod:`.inspection`: what ``gradfix methods`` and
  ``gradfix inspect`` show.

Names are imported from their modules on first use (:mod:`gradfix_hf.runtime.exports`): checking a recipe's output
path imports no transformers. ``prepare`` is the function; the module is ``gradfix_hf.transport.prepare`` in
``sys.modules``.
"""
from typing import TYPE_CHECKING

from ..runtime.exports import lazy_exports

if TYPE_CHECKING:  # what the names below are; imported on first use
    from .auto import candidate_jobs, choice_table, choose, score_candidates
    from .destination import check_output_folder, check_votes_output, run_destination
    from .evaluation import (DEFAULT_ALPHAS, alpha_grid, comparison_jobs, evaluate_methods, evaluation_metrics,
                             oracle_jobs, score_jobs)
    from .few_shot import check_few_shot_stage, few_shot_baseline, few_shot_finetune
    from .inputs import as_recipe, recipe_inputs, resolved_inputs
    from .output_folder import RECIPE_NAME, REPORT_NAME, atomic_folder, push_output_folder, read_report
    from .prepare import PreparedRun, prepare
    from .recipe_votes import (compute_recipe_votes, load_votes_for, recipe_votes, save_votes, vote_device,
                               vote_dtype, vote_engine_name, vote_key, vote_sharding)
    from .result import TransportResult
    from .run import run_recipe, transport

_MODULES = {
    ".auto": ["candidate_jobs", "choice_table", "choose", "score_candidates"],
    ".destination": ["check_output_folder", "check_votes_output", "run_destination"],
    ".evaluation": ["DEFAULT_ALPHAS", "alpha_grid", "comparison_jobs", "evaluate_methods", "evaluation_metrics",
                    "oracle_jobs", "score_jobs"],
    ".few_shot": ["check_few_shot_stage", "few_shot_baseline", "few_shot_finetune"],
    ".inputs": ["as_recipe", "recipe_inputs", "resolved_inputs"],
    ".output_folder": ["RECIPE_NAME", "REPORT_NAME", "atomic_folder", "push_output_folder", "read_report"],
    ".prepare": ["PreparedRun", "prepare"],
    ".recipe_votes": ["compute_recipe_votes", "load_votes_for", "recipe_votes", "save_votes", "vote_device",
                      "vote_dtype", "vote_sharding", "vote_engine_name", "vote_key"],
    ".result": ["TransportResult"],
    ".run": ["run_recipe", "transport"],
}
__getattr__, __dir__ = lazy_exports(__name__, {name: module for module, names in _MODULES.items() for name in names})

__all__ = ["transport", "run_recipe", "as_recipe", "prepare", "PreparedRun", "compute_recipe_votes",
           "load_votes_for", "recipe_votes", "save_votes", "vote_sharding", "vote_device", "vote_dtype",
           "vote_engine_name", "vote_key", "TransportResult", "evaluation_metrics",
           "evaluate_methods", "comparison_jobs", "oracle_jobs", "score_jobs", "alpha_grid", "DEFAULT_ALPHAS",
           "candidate_jobs", "choose", "choice_table", "score_candidates", "check_few_shot_stage", "few_shot_baseline",
           "few_shot_finetune", "RECIPE_NAME",
           "REPORT_NAME", "atomic_folder", "push_output_folder", "read_report", "check_votes_output", "recipe_inputs",
           "resolved_inputs", "check_output_folder", "run_destination"]
