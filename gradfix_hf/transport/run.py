"""Run a recipe end to end: prepare → (stage 1) votes → (``auto``: choose) → (stage 2) streaming merge → output.

``run_recipe`` is what ``gradfix run`` calls and :func:`transport` is the one-call Python API. Under a launcher
with several processes all of them take part in the votes; the main process alone evaluates, merges and writes.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional, Union

import torch
import yaml

from ..errors import GradFixError
from ..hub import ResolvedModel, pinned_reference
from ..merge import MergeJob, drift_report, merge_to_folder, write_lora_adapter
from ..plan import SOURCE_FT, TARGET
from ..recipe import Recipe
from ..runtime import on_main_process, process_context, threads_for_model
from ..storage import VotesFile
from ..version import __version__
from .auto import resolve as resolve_auto
from .destination import run_destination
from .evaluation import evaluate_methods
from .few_shot import check_few_shot_stage, stage_refinement
from .inputs import as_recipe, recipe_inputs, resolved_inputs
from .model_card import write_model_card
from .output_folder import REBASE_RECIPE_NAME, RECIPE_NAME, atomic_folder, check_destination, write_report
from .prepare import PreparedRun, prepare
from .recipe_votes import recipe_votes
from .result import TransportResult
from .scores import TEST, VALIDATION

#: the first lines of a rebase's recipe.yaml
REBASE_RECIPE_HEADER = ("# The recipe `gradfix rebase` inferred and ran (method auto: the validation split chooses).\n"
                        "# Rerun it with: gradfix run recipe.yaml -o OUT\n")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _totals(per_tensor: dict) -> dict:
    numel = sum(s["numel"] for s in per_tensor.values())
    kept = sum(s["kept_fraction"] * s["numel"] for s in per_tensor.values())
    return {"transported_coordinates": numel, "kept_fraction": kept / max(numel, 1)}



def _check_tasks_line_up(prepared: list[PreparedRun]) -> None:
    """Every task vector of a merge transports the same tensors onto the same target layout."""
    head = prepared[0]
    for run in prepared[1:]:
        if run.plan.transported != head.plan.transported:
            differ = sorted(set(run.plan.transported) ^ set(head.plan.transported))
            raise GradFixError(f"{run.task.where} ({run.models[SOURCE_FT].name}): its task vector covers other "
                               f"tensors than {head.task.where}'s ({len(differ)} differ, e.g. {differ[:3]}): the "
                               "fine-tunes must share one architecture to be merged.")


def run_recipe(recipe: Recipe, output_dir: Optional[Union[str, os.PathLike]] = None, *,
               votes: Optional[Union[str, os.PathLike]] = None, dry_run: bool = False, overwrite: bool = False,
               token: Optional[str] = None, progress: bool = True, force: bool = False,
               rebase: Optional[dict] = None) -> Union[TransportResult, dict, None]:
    """Run ``recipe``; returns a :class:`TransportResult` (or, with ``dry_run``, the checked plan as a dict).

    The output folder is ``output_dir``, else the recipe's ``output.path``; a run without either is refused before
    any work (a dry run writes nothing and needs none). ``overwrite`` replaces a previous gradfix output folder
    there (never anything else); ``force`` uses a votes file recorded for another target anyway (α outside (0, 1]
    is ``method.force``). ``rebase`` (what ``gradfix rebase`` inferred) goes into the report and the model card,
    and the folder then also holds ``recipe.yaml``, the recipe it inferred (``method: auto`` unresolved).

    Under a launcher with several processes, all of them compute the votes (each its shard of the samples,
    see :func:`compute_recipe_votes`); then the main process alone evaluates, merges and writes the output
    folder while the others wait for it and return ``None`` (``dry_run`` returns the plan everywhere).
    """
    started = time.time()
    destination = run_destination(recipe, output_dir, dry_run=dry_run)  # a run that writes needs one: say so now
    inputs = recipe_inputs(recipe, votes)
    if destination is not None:  # an output that would replace an input or a foreign folder fails now (dry run too)
        check_destination(destination, overwrite, inputs)
    tasks = recipe.resolved_tasks()
    # NaN/inf: checked over every checkpoint before gradients; a run from votes files only (no gradient) checks
    # each input tensor as the merge reads it instead of reading every checkpoint twice (output is atomic)
    computes_votes = recipe.needs_votes and votes is None and any(task.votes is None for task in tasks)
    prepared = [prepare(recipe, task, token=token, select_samples=not dry_run, run_code=not dry_run,
                        check_values=dry_run or computes_votes) for task in tasks]
    _check_tasks_line_up(prepared)
    if not dry_run:
        check_few_shot_stage(prepared)  # a fine-tune after the merge needs one task's vote samples: say so now
    if destination is not None:  # the models as resolved: a Hub model's snapshot in the cache is an input too
        check_destination(destination, overwrite, inputs + resolved_inputs(prepared))
    if dry_run:
        if len(prepared) == 1:
            return {"ok": True, "method": recipe.method.to_dict(), **prepared[0].summary()}
        return {"ok": True, "method": recipe.method.to_dict(),
                "tasks": {run.task.name: run.summary() for run in prepared}}
    with threads_for_model(prepared[0].parameter_count):  # tiny models: one thread (gradfix_hf/runtime/threads.py)
        vote_files = recipe_votes(recipe, prepared, votes=votes, progress=progress, force=force)  # every process

        def finish() -> TransportResult:
            runs, choice, refinement = prepared, None, None
            if recipe.method.is_auto:  # the validation split picks the mask and α (gradfix_hf/transport/auto.py)
                runs, choice, refinement = resolve_auto(prepared, vote_files, progress=progress)
            method = runs[0].recipe.method
            job = MergeJob([run.plan for run in runs], vote_files, method.method, method.parameters,
                           float(method.alpha), [run.task.weight for run in runs])
            if method.few_shot is not None:  # stage 3: the merge fine-tuned on the vote samples (auto: already done)
                job = job.replace(refinement=refinement if refinement is not None else stage_refinement(runs[0], job))
            return _finish_run(runs, job, votes, destination, overwrite, progress, started, auto=choice,
                               rebase=rebase)

        return on_main_process(process_context(), finish)


def _task_report(run: PreparedRun, votes: Optional[VotesFile], weight: float) -> dict:
    return {"name": run.task.name, "weight": weight,
            "models": {role: m.describe() for role, m in run.models.items()},
            "votes": None if votes is None else {
                "n_samples": votes.n_samples, "aggregation": votes.metadata["aggregation"],
                "voted_tensors": len(votes.votes), "not_voted_tensors": len(votes.not_voted),
                "data_fingerprint": votes.metadata["data_fingerprint"],
                "data_source": votes.metadata.get("data_source"), "file": pinned_reference(run.task.votes),
                "selection": json.loads(votes.metadata["data_selection"]) if "data_selection" in votes.metadata
                else None}}


def _evaluation(head: PreparedRun, job: MergeJob, auto: Optional[dict]) -> Optional[dict]:
    """The run's held-out table: on the test split when one is configured (``evaluation.test_path`` /
    ``test_split``), else on the validation split (``evaluation.split``). ``method: auto`` chose on the validation
    split, which the report says (``method_chosen_on``)."""
    if head.eval_samples is None:
        return None
    evaluation = evaluate_methods(head, job, split=TEST if head.test_samples is not None else VALIDATION)
    if auto is not None:
        evaluation["method_chosen_on"] = VALIDATION
    return evaluation


def _modules_to_save(prepared: list[PreparedRun], requested: Optional[list[str]]) -> list[str]:
    """``output.as_lora.modules_to_save``, by default the modules the LoRA fine-tunes among the inputs store whole."""
    if requested is not None:
        return list(requested)
    adapters = [run.models[SOURCE_FT] for run in prepared if run.models[SOURCE_FT].is_adapter]
    return sorted({m for model in adapters for m in model.extra["adapter"].modules_to_save})


def _finish_run(prepared: list[PreparedRun], job: MergeJob, votes_path: Optional[Union[str, os.PathLike]],
                destination: Path, overwrite: bool, progress: bool, started: float,
                auto: Optional[dict] = None, rebase: Optional[dict] = None) -> TransportResult:
    """Evaluation, streaming merge and the output folder (one process)."""
    head = prepared[0]
    recipe = head.recipe
    evaluation = _evaluation(head, job, auto)
    dtype = DTYPES[recipe.output.dtype] if recipe.output.dtype else None
    target = head.models[TARGET]
    with atomic_folder(destination, overwrite=overwrite) as tmp:
        lora = None
        if recipe.output.as_lora is not None:  # a LoRA adapter for θ_B instead of full weights
            as_lora = recipe.output.as_lora
            per_tensor, lora = write_lora_adapter(job, tmp, rank=as_lora.rank, energy=as_lora.energy, target=target,
                                                  objective=recipe.objective, dtype=dtype, progress=progress,
                                                  modules_to_save=_modules_to_save(prepared, as_lora.modules_to_save))
        else:
            per_tensor = merge_to_folder(job, tmp, dtype=dtype, max_shard_size=recipe.output.max_shard_size,
                                         progress=progress)
        head.plan.layout.config.save_pretrained(tmp)
        if head.tokenizer is not None:
            head.tokenizer.save_pretrained(tmp)
        _copy_generation_config(target, tmp)
        recipe_yaml = recipe.to_yaml()
        (tmp / RECIPE_NAME).write_text(recipe_yaml)
        if rebase is not None:  # the recipe `gradfix rebase` built: `gradfix run OUT/recipe.yaml` reproduces it
            (tmp / REBASE_RECIPE_NAME).write_text(REBASE_RECIPE_HEADER + yaml.safe_dump(rebase["recipe"],
                                                                                       sort_keys=False))
        tasks = [_task_report(run, v, w) for run, v, w in zip(prepared, job.votes, job.weights)]
        if votes_path and tasks[0]["votes"] is not None:
            tasks[0]["votes"]["file"] = pinned_reference(str(votes_path))
        report = {
            "library_version": __version__,
            "model_class": head.plan.layout.auto_class_name,
            "objective": recipe.objective,
            "method": recipe.method.to_dict(),
            "models": tasks[0]["models"],
            "tensors": head.plan.summary(),
            "votes": tasks[0]["votes"],
            "tasks": tasks,
            "totals": _totals(per_tensor),
            "drift": drift_report(per_tensor),
            "per_tensor": per_tensor,
            "evaluation": evaluation,
            "auto": auto,
            **({"rebase": {k: v for k, v in rebase.items() if k != "recipe"}} if rebase else {}),
            "seconds": round(time.time() - started, 3),
        }
        if lora is not None:
            report["lora"] = lora  # per-module rank and reconstruction error of the adapter
        notes = {run.task.name: run.data_notes for run in prepared if run.data_notes}
        if notes:  # e.g. data.max_length capped at the target's positions
            report["data_notes"] = notes[head.task.name] if list(notes) == [head.task.name] else notes
        write_report(tmp, report)
        data_paths = {run.task.data.path for run in prepared if run.task.data is not None}
        datasets = sorted(p for p in data_paths if not Path(p).expanduser().exists()) or None
        write_model_card(tmp, report, recipe_yaml, head.objective.pipeline_task if head.objective else None,
                         datasets)
    return TransportResult(destination, recipe)


def _copy_generation_config(target: ResolvedModel, folder: Path) -> None:
    source = target.local_dir / "generation_config.json"
    if source.is_file():
        shutil.copy(source, folder / "generation_config.json")


def transport(recipe: Union[Recipe, str, os.PathLike, dict], output_dir: Optional[Union[str, os.PathLike]] = None,
              **kwargs: Any) -> TransportResult:
    """One call: run a recipe (object, YAML path or dict) and return a :class:`TransportResult`.

    The output folder is ``output_dir``, else the recipe's ``output.path`` (one of them is required).

    >>> result = transport("recipes/quickstart.yaml", "out")       # doctest: +SKIP
    >>> pipeline("text-classification", model=result.model, tokenizer=result.tokenizer)  # doctest: +SKIP
    """
    return run_recipe(as_recipe(recipe, kwargs.pop("loss_fn", None)), output_dir, **kwargs)
