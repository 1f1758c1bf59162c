"""Run a recipe end to end: resolve → check → sample → (stage 1) votes → (stage 2) streaming merge → output.

``prepare`` does every check that needs no gradient (models, names, shapes, vocabulary, NaN/inf, data,
labels) for one task vector, so bad input fails before the costly part; a merge prepares each of its tasks.
``run_recipe`` is what ``gradfix run`` and ``Recipe.run`` call; ``compute_recipe_votes`` is what
``gradfix votes`` calls; ``recipe_votes`` gives every task its votes, computing each distinct vote once.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

from . import compatibility as compat
from .auto import candidate_label, resolve as resolve_auto
from .compatibility import SOURCE, SOURCE_FT, TARGET, TARGET_FT
from .data import (LabelledSamples, describe_source, evaluation_samples, label_space_from_rows, load_split,
                   select_per_class, with_images)
from .errors import GradFixError, RecipeError, VotesFileError
from .few_shot import few_shot_baseline
from .hub import ResolvedModel, local_path, pinned_reference, resolve_model
from .merge.drift import drift_report
from .merge.streaming import MergeJob, apply_in_memory, load_base_model, merge_to_folder
from .metrics import MetricSet, score_model
from .objectives import OBJECTIVES, CallableObjective, CLIPZeroShotObjective, Objective
from .output_folder import (RECIPE_NAME, atomic_folder, check_destination, push_output_folder, read_report,
                            write_model_card, write_report)
from .recipe import Recipe, ResolvedTask
from .selection import target_embedder
from .version import __version__
from .votes import VotesFile, params_fingerprint
from .votes.distributed import (ProcessContext, VoteEngine, batched_vote_engine, distributed_votes, on_main_process,
                                process_context, reference_vote_engine)

logger = logging.getLogger("gradfix_hf")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TOKENIZER_FILES = ("tokenizer*", "vocab*", "merges.txt", "*.model", "*.tiktoken")


@dataclass
class PreparedRun:
    """Everything checked and loaded before gradient work."""

    recipe: Recipe
    task: ResolvedTask
    models: dict[str, ResolvedModel]
    plan: compat.TransportPlan
    tokenizer: Any
    objective: Optional[Objective]
    samples: Optional[LabelledSamples]
    examples: list = field(default_factory=list)
    eval_samples: Optional[LabelledSamples] = None
    test_samples: Optional[LabelledSamples] = None

    @property
    def voted_shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: self.plan.layout.parameters[n] for n in self.plan.transported}

    def summary(self) -> dict:
        return {
            "models": {role: m.describe() for role, m in self.models.items()},
            "model_class": type(self.plan.layout.config).__name__ + " → " + self.plan.layout.config.architectures[0],
            "tensors": self.plan.summary(),
            "vote_samples": len(self.samples) if self.samples else 0,
            "data_fingerprint": self.samples.fingerprint if self.samples else None,
            "selection": self.samples.selection if self.samples is not None else None,
            "evaluation_samples": len(self.eval_samples) if self.eval_samples else 0,
        }


def _load_tokenizer(models: dict[str, ResolvedModel], role: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    folder = models[role].local_dir
    if models[role].is_adapter and not any(next(folder.glob(p), None) for p in TOKENIZER_FILES):
        return None  # an adapter without its own tokenizer (AutoTokenizer would make an empty one from config.json)
    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def prepare(recipe: Recipe, task: Optional[ResolvedTask] = None, *, token: Optional[str] = None,
            check_values: bool = True, select_samples: bool = True) -> PreparedRun:
    """Resolve the models and the data of one task vector (default: the recipe's first) and check everything
    that needs no gradient. ``select_samples=False`` (a dry run) skips embedding the pool of a non-random
    ``data.selection``: the class sizes are checked, the rows are chosen at run time."""
    task = task or recipe.resolved_tasks()[0]
    refs = {SOURCE: task.models.source, SOURCE_FT: task.models.source_finetuned, TARGET: task.models.target}
    if task.models.target_finetuned is not None:
        refs[TARGET_FT] = task.models.target_finetuned
    models = {role: resolve_model(ref, role=role, allow_pickle=recipe.allow_pickle, token=token,
                                  trust_remote_code=recipe.trust_remote_code)
              for role, ref in refs.items()}
    compat.bind_adapters(models)  # a LoRA adapter as θ_A^ft is read on θ_A (gradfix_hf/lora)
    names = {role: m.name for role, m in models.items()}
    configs = {role: compat.load_config(m, recipe.trust_remote_code) for role, m in models.items()}
    compat.check_configs(configs, names)
    tokenizers = {role: _load_tokenizer(models, role, recipe.trust_remote_code) for role in models}
    compat.check_tokenizers(tokenizers, names)
    tokenizer = tokenizers[TARGET] or tokenizers[SOURCE_FT] or tokenizers[SOURCE]

    objective_cls = OBJECTIVES[recipe.objective]
    clip = objective_cls is CLIPZeroShotObjective
    if clip:  # a CLIP θ_B, its image processor and tokenizer (gradfix_hf/objectives/clip_zero_shot.py)
        image_processor = CLIPZeroShotObjective.check_target(configs[TARGET], models[TARGET], tokenizer)
    auto_class = recipe.model_class or objective_cls.auto_class_name
    config = compat.task_config(configs[TARGET], configs[SOURCE_FT], recipe.objective)
    layout = compat.build_layout(auto_class, config, recipe.trust_remote_code)
    plan = compat.plan_transport(models, layout, check_values=check_values,
                                 transported_prefixes=getattr(objective_cls, "transported_prefixes", None))

    objective = samples = eval_samples = test_samples = None
    examples: list = []
    data = task.data
    if data is not None:
        if tokenizer is None and recipe.objective != "callable":
            raise GradFixError(f"{TARGET}: no tokenizer found in {names[TARGET]} (nor in the source models).")
        dataset = load_split(data.path, name=data.name, split=data.split,
                             revision=data.revision, where="data", token=token)
        columns = [data.image_column, data.label_column] if clip else None  # what the objective reads
        if clip:
            dataset = with_images(dataset, data.image_column, data.path, "data")
            labels = CLIPZeroShotObjective.label_space(data, configs[SOURCE_FT], dataset)
            objective = CLIPZeroShotObjective.from_target(data, tokenizer, labels, plan, image_processor)
        elif objective_cls is CallableObjective:
            if data.label_column not in dataset.column_names:
                raise GradFixError(f"data: label column {data.label_column!r} not in {dataset.column_names}.")
            labels = label_space_from_rows(dataset, data.label_column)
            objective = CallableObjective(data, tokenizer, labels, recipe.loss_fn, auto_class)
        else:
            labels = objective_cls.label_space(data, configs[SOURCE_FT])
            objective = objective_cls(data, tokenizer, labels)
        extra = {"objective": recipe.objective, "prompt": data.prompt,
                 "label_words": data.label_words, "max_length": data.max_length}
        if clip:  # the prompts are part of the loss, hence of what the votes depend on
            extra.update(templates=objective.templates, image_column=data.image_column)
        embed = None
        if data.selection != "random":  # θ_B's own embeddings choose the rows (gradfix_hf/selection.py)
            embed = target_embedder(plan, objective, batch_size=recipe.vote_batch_size)
        samples = select_per_class(dataset, data, labels, fingerprint_extra=extra,
                                   embed=embed if select_samples else None, columns=columns)
        examples = [objective.encode(row, label) for row, label in zip(samples.rows, samples.labels)]
        if recipe.evaluation is not None:
            if objective_cls is CallableObjective:
                raise RecipeError("evaluation: held-out scores need a built-in objective, not 'callable'.")
            ev = recipe.evaluation

            def held_out(path: str, split: str, where: str) -> LabelledSamples:
                rows = load_split(path, name=ev.name or data.name, split=split, revision=ev.revision or data.revision,
                                  where=where, token=token)
                if clip:
                    rows = with_images(rows, data.image_column, path, where)
                return evaluation_samples(rows, data, labels, ev.max_samples, describe_source(path, split), where,
                                          columns=columns)

            eval_samples = held_out(ev.path or data.path, ev.split, "evaluation")
            if ev.test_split is not None:
                test_samples = held_out(ev.test_path or ev.path or data.path, ev.test_split, "evaluation.test_split")
    if clip:  # the output folder gets θ_B's tokenizer and image processor (for pipeline(...))
        tokenizer = CLIPZeroShotObjective.processor(image_processor, tokenizer)
    return PreparedRun(recipe=recipe, task=task, models=models, plan=plan, tokenizer=tokenizer, objective=objective,
                       samples=samples, examples=examples, eval_samples=eval_samples, test_samples=test_samples)


def _aggregation(recipe: Recipe) -> str:
    return "mean" if recipe.method.sign_source == "mean-votes" else "majority"


def vote_engine_name(recipe: Recipe, objective: Objective) -> str:
    """``batched`` (one batched backward per micro-batch) unless the recipe or the objective needs the exact
    one-sample ``reference`` loop (``vote_engine: reference`` / ``--vote-engine reference``, or a user loss)."""
    if recipe.vote_engine != "auto":
        return recipe.vote_engine
    return "batched" if objective.supports_batching else "reference"


def _vote_engine(prepared: PreparedRun, model: torch.nn.Module, context: ProcessContext) -> VoteEngine:
    """The per-process vote engine (the one place that chooses among engines with the same contract)."""
    device = context.device if context.distributed else None
    if vote_engine_name(prepared.recipe, prepared.objective) == "batched":
        return batched_vote_engine(model, prepared.objective, prepared.plan.transported,
                                   micro_batch_size=prepared.recipe.vote_batch_size, device=device)
    return reference_vote_engine(model, prepared.objective.loss, prepared.plan.transported, device=device)


def compute_recipe_votes(prepared: PreparedRun, *, progress: bool = True) -> VotesFile:
    """Stage 1: votes of θ_B (fp32, eval mode, with the fine-tune's head) on the recipe's samples.

    Under a launcher with several processes (``accelerate launch``, ``torchrun``) every process computes its
    contiguous shard of the samples and the shards are all-reduced (:mod:`gradfix_hf.votes.distributed`):
    every process returns the same complete votes; majority votes are bitwise those of one process, mean
    votes exact up to float summation order. Only the caller decides who writes them (the CLI: the main
    process).
    """
    if prepared.samples is None:
        raise RecipeError("data: computing votes needs a data section.")
    context = process_context()
    model = load_base_model(prepared.plan)
    batched = vote_engine_name(prepared.recipe, prepared.objective) == "batched"
    votes, evidence = distributed_votes(_vote_engine(prepared, model, context), prepared.examples,
                                        prepared.voted_shapes, aggregation=_aggregation(prepared.recipe),
                                        progress=progress, context=context,
                                        block=prepared.recipe.vote_batch_size if batched else 1)
    target = prepared.models[TARGET]
    metadata = {
        "format": "gradfix-votes", "format_version": "1", "n_samples": str(len(prepared.examples)),
        "aggregation": _aggregation(prepared.recipe), "objective": prepared.recipe.objective,
        "target": target.name, "target_revision": target.commit_hash or "",
        "data_source": prepared.samples.source, "data_fingerprint": prepared.samples.fingerprint,
        "params_fingerprint": params_fingerprint(prepared.voted_shapes), "library_version": __version__,
        "engine": vote_engine_name(prepared.recipe, prepared.objective),
        "data_selection": json.dumps({**(prepared.samples.selection or {}), "rows": prepared.samples.indices}),
    }
    return VotesFile(votes=votes, metadata=metadata, evidence=evidence)


def load_votes_for(prepared: PreparedRun, path: Union[str, os.PathLike]) -> VotesFile:
    """A votes file checked against this run's target, parameter set and aggregation."""
    votes = VotesFile.load(local_path(path, where="votes", error=VotesFileError))  # a file or an hf:// reference
    target = prepared.models[TARGET]
    votes.check_target(prepared.voted_shapes, target=target.name, commit_hash=target.commit_hash, source=str(path))
    if votes.metadata["aggregation"] != _aggregation(prepared.recipe):
        raise VotesFileError(f"{path}: votes were aggregated with {votes.metadata['aggregation']!r} but mask "
                             f"{prepared.recipe.name_and_mask} needs {_aggregation(prepared.recipe)!r}.")
    if prepared.samples is not None and votes.metadata["data_fingerprint"] != prepared.samples.fingerprint:
        logger.warning("%s: votes were computed on other samples (fingerprint %s, recipe's data gives %s).",
                       path, votes.metadata["data_fingerprint"], prepared.samples.fingerprint)
    return votes


def evaluation_metrics(prepared: PreparedRun) -> MetricSet:
    """The run's `evaluate` metrics (``evaluation.metrics``, the first picks α; plus exact match for seq2seq)."""
    return MetricSet(prepared.recipe.evaluation.metrics, prepared.objective)


def score_row(model_label: str, method: str, alpha: Optional[float], scores: dict) -> dict:
    """One row of an evaluation table: ``score`` is the first metric (the one that picks α), ``scores`` all."""
    return {"model": model_label, "method": method, "alpha": alpha, "score": next(iter(scores.values())),
            "scores": scores}


def comparison_jobs(prepared: PreparedRun, job: MergeJob) -> list[tuple[str, str, MergeJob]]:
    """(key, label, job) of what a held-out comparison scores besides zero-shot θ_B: naive θ_B + α·τ_A, the
    recipe's method (unless it is the naive mask), and the oracle when θ_B^ft is given."""
    mask = job.parameters.get("mask")
    jobs = [("naive", "θ_B + α·τ_A (naive)", MergeJob.single(job.head, None, "naive", job.alpha))]
    if job.method.name != "gradfix":
        jobs.append((job.method.name, job.method.pretty_name, job))
    elif mask != "naive":  # labelled with the parameters that differ from the defaults
        defaults = job.method.validate({})
        jobs.append((mask, candidate_label({k: v for k, v in job.parameters.items() if k == "mask" or v != defaults[k]}),
                     job))
    if mask != "oracle":
        jobs += oracle_jobs(prepared, job.alpha)
    return jobs


def oracle_jobs(prepared: PreparedRun, alpha: float = 1.0) -> list[tuple[str, str, MergeJob]]:
    """The oracle reference (mask from the sign of τ_B) when θ_B^ft is given, else nothing."""
    if TARGET_FT not in prepared.plan.readers:
        return []
    return [("oracle", "oracle (sign of τ_B)", MergeJob.single(prepared.plan, None, "oracle", alpha))]


def evaluate_methods(prepared: PreparedRun, job: MergeJob) -> dict:
    """Held-out scores (every metric) of θ_B (zero-shot, with the copied head), the few-shot fine-tuning
    baseline, naive θ_B + α·τ_A, the result and the oracle."""
    model = load_base_model(prepared.plan)
    objective, samples, metrics = prepared.objective, prepared.eval_samples, evaluation_metrics(prepared)
    rows = [score_row("θ_B zero-shot", "zero-shot", None, score_model(objective, model, samples, metrics))]
    few_shot = few_shot_baseline(prepared, model)
    if few_shot is not None:
        rows.append(score_row(few_shot[0], "few-shot", None, score_model(objective, few_shot[1], samples, metrics)))
        del few_shot
    for kind, label, variant in comparison_jobs(prepared, job):
        apply_in_memory(model, variant)
        rows.append(score_row(label, kind, variant.alpha, score_model(objective, model, samples, metrics)))
    return {"metric": next(iter(rows[0]["scores"])), "metrics": list(rows[0]["scores"]), "split": samples.source,
            "n_samples": len(samples), "rows": rows}


def _totals(per_tensor: dict) -> dict:
    numel = sum(s["numel"] for s in per_tensor.values())
    kept = sum(s["kept_fraction"] * s["numel"] for s in per_tensor.values())
    return {"transported_coordinates": numel, "kept_fraction": kept / max(numel, 1)}


class TransportResult:
    """A finished transport: the output folder, its report, and the model ready for ``pipeline(...)``."""

    def __init__(self, output_dir: Union[str, Path], recipe: Optional[Recipe] = None):
        self.output_dir = Path(output_dir)
        self.report = read_report(self.output_dir)
        self.recipe = recipe

    @functools.cached_property
    def model(self):
        import transformers

        if "lora" in self.report:  # a LoRA adapter for θ_B (output.as_lora): θ_B with the adapter applied
            from .lora.export import load_adapter_model

            return load_adapter_model(self.output_dir, self.report)
        return getattr(transformers, self.report["model_class"]).from_pretrained(str(self.output_dir))

    @functools.cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.output_dir))

    @property
    def evaluation(self) -> Optional[dict]:
        return self.report.get("evaluation")

    def save_pretrained(self, save_directory: Union[str, os.PathLike], overwrite: bool = False) -> Path:
        """Copy the complete output folder (weights, config, tokenizer, report, card, recipe)."""
        destination = Path(save_directory)
        if destination.resolve() == self.output_dir.resolve():
            return destination
        with atomic_folder(destination, overwrite=overwrite) as tmp:
            shutil.copytree(self.output_dir, tmp, dirs_exist_ok=True)
        return destination

    def push_to_hub(self, repo_id: str, *, private: Optional[bool] = None, token: Optional[str] = None,
                    revision: Optional[str] = None, commit_message: Optional[str] = None,
                    commit_description: Optional[str] = None):
        """Create ``repo_id`` if needed and upload the output folder (weights, config, tokenizer, model card,
        report, recipe) to branch ``revision`` (default main) in one commit; see :func:`gradfix_hf.hub.push_folder`.

        The token comes from ``token`` or the standard places (HF_TOKEN, ``hf auth login``); ``private``
        applies when the repo is created. Returns huggingface_hub's ``CommitInfo`` (``.oid``, ``.commit_url``).
        """
        return push_output_folder(self.output_dir, repo_id, private=private, token=token, revision=revision,
                                  commit_message=commit_message, commit_description=commit_description)

    def __repr__(self) -> str:
        return f"TransportResult(output_dir={str(self.output_dir)!r}, kept_fraction={self.report['totals']['kept_fraction']:.4f})"


def vote_key(prepared: PreparedRun) -> str:
    """What a vote depends on: target (and revision), objective, aggregation, samples, voted tensors, and a
    copied head (its loss depends on it). Tasks with the same key share one votes computation."""
    target = prepared.models[TARGET]
    head = None
    if prepared.plan.copied_from_finetune:
        source_ft = prepared.models[SOURCE_FT]
        head = [source_ft.name, source_ft.commit_hash, sorted(prepared.plan.copied_from_finetune)]
    parts = [target.name, target.commit_hash, prepared.recipe.objective, _aggregation(prepared.recipe),
             prepared.samples.fingerprint if prepared.samples else None, params_fingerprint(prepared.voted_shapes),
             head, prepared.plan.layout.auto_class_name]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:20]


def recipe_votes(recipe: Recipe, prepared: list[PreparedRun], *, votes: Optional[Union[str, os.PathLike]] = None,
                 progress: bool = True) -> list[Optional[VotesFile]]:
    """The votes of every task: from its votes file, from ``votes_cache`` or computed; each distinct vote
    (same :func:`vote_key`) is computed once. Methods with a shared vote (``multi_source``) vote once, with the
    first task's data and head, for every source. Every process takes part in computations; only the main
    process writes the cache."""
    if not recipe.needs_votes:
        return [None] * len(prepared)
    if votes is not None and len(prepared) > 1 and not recipe.method.method.shared_vote:
        raise RecipeError("--votes gives one votes file, but this merge has one vote per task: set tasks[i].votes "
                          "in the recipe instead.")
    context = process_context()
    computed: dict[str, VotesFile] = {}
    out: list[Optional[VotesFile]] = []
    for i, run in enumerate(prepared):
        if recipe.method.method.shared_vote and i > 0:
            out.append(out[0])
            continue
        path = (votes if i == 0 else None) or run.task.votes
        if path:
            out.append(load_votes_for(run, path))
            continue
        key = vote_key(run)
        cached = Path(recipe.votes_cache) / f"{key}.safetensors" if recipe.votes_cache else None
        if key not in computed and cached is not None and cached.is_file():
            computed[key] = load_votes_for(run, cached)
            logger.info("%s: votes from the cache %s", run.task.where, cached)
        if key not in computed:
            computed[key] = compute_recipe_votes(run, progress=progress)
            if cached is not None:
                on_main_process(context, functools.partial(computed[key].save, cached))
        out.append(computed[key])
    return out


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
               token: Optional[str] = None, progress: bool = True) -> Union[TransportResult, dict, None]:
    """Run ``recipe``; returns a :class:`TransportResult` (or, with ``dry_run``, the checked plan as a dict).

    Under a launcher with several processes, all of them compute the votes (each its shard of the samples,
    see :func:`compute_recipe_votes`); then the main process alone evaluates, merges and writes the output
    folder while the others wait for it and return ``None`` (``dry_run`` returns the plan everywhere).
    """
    started = time.time()
    destination = output_dir or recipe.output.path
    if destination is not None and not dry_run:
        check_destination(Path(destination), overwrite)
    tasks = recipe.resolved_tasks()
    # NaN/inf: checked over every checkpoint before gradients; a run from votes files only (no gradient) checks
    # each input tensor as the merge reads it instead of reading every checkpoint twice (output is atomic)
    computes_votes = recipe.needs_votes and votes is None and any(task.votes is None for task in tasks)
    prepared = [prepare(recipe, task, token=token, select_samples=not dry_run,
                        check_values=dry_run or computes_votes) for task in tasks]
    _check_tasks_line_up(prepared)
    if dry_run:
        if len(prepared) == 1:
            return {"ok": True, "method": recipe.method.to_dict(), **prepared[0].summary()}
        return {"ok": True, "method": recipe.method.to_dict(),
                "tasks": {run.task.name: run.summary() for run in prepared}}
    vote_files = recipe_votes(recipe, prepared, votes=votes, progress=progress)  # every process takes part

    def finish() -> TransportResult:
        runs, choice = prepared, None
        if recipe.method.is_auto:  # the validation split picks the mask and α (gradfix_hf/auto.py)
            runs, choice = resolve_auto(prepared, vote_files, progress=progress)
        method = runs[0].recipe.method
        job = MergeJob([run.plan for run in runs], vote_files, method.method, method.parameters, float(method.alpha),
                       [run.task.weight for run in runs])
        return _finish_run(runs, job, votes, destination, overwrite, progress, started, auto=choice)

    return on_main_process(process_context(), finish)


def _task_report(run: PreparedRun, votes: Optional[VotesFile], weight: float) -> dict:
    return {"name": run.task.name, "weight": weight,
            "models": {role: m.describe() for role, m in run.models.items()},
            "votes": None if votes is None else {
                "n_samples": votes.n_samples, "aggregation": votes.metadata["aggregation"],
                "data_fingerprint": votes.metadata["data_fingerprint"],
                "data_source": votes.metadata.get("data_source"), "file": pinned_reference(run.task.votes),
                "selection": json.loads(votes.metadata["data_selection"]) if "data_selection" in votes.metadata
                else None}}


def _finish_run(prepared: list[PreparedRun], job: MergeJob, votes_path: Optional[Union[str, os.PathLike]],
                destination: Optional[Union[str, os.PathLike]], overwrite: bool, progress: bool,
                started: float, auto: Optional[dict] = None) -> TransportResult:
    """Evaluation, streaming merge and the output folder (one process)."""
    head = prepared[0]
    recipe = head.recipe
    evaluation = evaluate_methods(head, job) if head.eval_samples is not None else None
    if destination is None:
        destination = Path(tempfile.mkdtemp(prefix="gradfix-")) / "output"
    dtype = DTYPES[recipe.output.dtype] if recipe.output.dtype else None
    target = head.models[TARGET]
    with atomic_folder(Path(destination), overwrite=overwrite) as tmp:
        lora = None
        if recipe.output.as_lora is not None:  # a LoRA adapter for θ_B instead of full weights (gradfix_hf/lora)
            from .lora.export import write_lora_adapter

            per_tensor, lora = write_lora_adapter(job, tmp, rank=recipe.output.as_lora.rank,
                                                  energy=recipe.output.as_lora.energy, target=target,
                                                  objective=recipe.objective, dtype=dtype, progress=progress)
        else:
            per_tensor = merge_to_folder(job, tmp, dtype=dtype, max_shard_size=recipe.output.max_shard_size,
                                         progress=progress)
        head.plan.layout.config.save_pretrained(tmp)
        if head.tokenizer is not None:
            head.tokenizer.save_pretrained(tmp)
        _copy_generation_config(target, tmp)
        recipe_yaml = recipe.to_yaml()
        (tmp / RECIPE_NAME).write_text(recipe_yaml)
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
            "seconds": round(time.time() - started, 3),
        }
        if lora is not None:
            report["lora"] = lora  # per-module rank and reconstruction error of the adapter
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

    >>> result = transport("recipes/quickstart.yaml")              # doctest: +SKIP
    >>> pipeline("text-classification", model=result.model, tokenizer=result.tokenizer)  # doctest: +SKIP
    """
    return run_recipe(as_recipe(recipe, kwargs.pop("loss_fn", None)), output_dir, **kwargs)


def as_recipe(recipe: Union[Recipe, str, os.PathLike, dict], loss_fn: Optional[Any] = None) -> Recipe:
    """A :class:`Recipe` from a recipe object, a dict or a YAML path (with ``loss_fn`` for a 'callable' objective)."""
    if isinstance(recipe, dict):
        return Recipe.from_dict(recipe, loss_fn=loss_fn)
    if not isinstance(recipe, Recipe):
        return Recipe.from_yaml(recipe, loss_fn=loss_fn)
    return recipe.replace(loss_fn=loss_fn) if loss_fn is not None else recipe
