"""Run a recipe end to end: resolve → check → sample → (stage 1) votes → (stage 2) streaming merge → output.

``prepare`` does every check that needs no gradient (models, names, shapes, vocabulary, NaN/inf, data,
labels), so bad input fails before the costly part. ``run_recipe`` is what ``gradfix run`` and
``Recipe.run`` call; ``compute_recipe_votes`` is what ``gradfix votes`` calls.
"""
from __future__ import annotations

import functools
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
from .compatibility import SOURCE, SOURCE_FT, TARGET, TARGET_FT
from .data import LabelledSamples, describe_source, evaluation_samples, label_space_from_rows, load_split, select_per_class
from .errors import GradFixError, RecipeError, VotesFileError
from .hub import ResolvedModel, resolve_model
from .merge.streaming import MaskSpec, apply_in_memory, load_base_model, merge_to_folder
from .objectives import OBJECTIVES, CallableObjective, Objective
from .output_folder import RECIPE_NAME, atomic_folder, check_destination, read_report, write_model_card, write_report
from .recipe import Recipe
from .version import __version__
from .votes import VotesFile, params_fingerprint
from .votes.distributed import (ProcessContext, VoteEngine, batched_vote_engine, distributed_votes, on_main_process,
                                process_context, reference_vote_engine)

logger = logging.getLogger("gradfix_hf")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class PreparedRun:
    """Everything checked and loaded before gradient work."""

    recipe: Recipe
    models: dict[str, ResolvedModel]
    plan: compat.TransportPlan
    tokenizer: Any
    objective: Optional[Objective]
    samples: Optional[LabelledSamples]
    examples: list = field(default_factory=list)
    eval_samples: Optional[LabelledSamples] = None

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
            "evaluation_samples": len(self.eval_samples) if self.eval_samples else 0,
        }


def _load_tokenizer(models: dict[str, ResolvedModel], role: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(models[role].local_dir), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def prepare(recipe: Recipe, *, token: Optional[str] = None, check_values: bool = True) -> PreparedRun:
    """Resolve the models and the data and check everything that needs no gradient."""
    refs = {SOURCE: recipe.models.source, SOURCE_FT: recipe.models.source_finetuned, TARGET: recipe.models.target}
    if recipe.models.target_finetuned is not None:
        refs[TARGET_FT] = recipe.models.target_finetuned
    models = {role: resolve_model(ref, role=role, allow_pickle=recipe.allow_pickle, token=token)
              for role, ref in refs.items()}
    names = {role: m.name for role, m in models.items()}
    configs = {role: compat.load_config(m, recipe.trust_remote_code) for role, m in models.items()}
    compat.check_configs(configs, names)
    tokenizers = {role: _load_tokenizer(models, role, recipe.trust_remote_code) for role in models}
    compat.check_tokenizers(tokenizers, names)
    tokenizer = tokenizers[TARGET] or tokenizers[SOURCE_FT] or tokenizers[SOURCE]

    objective_cls = OBJECTIVES[recipe.objective]
    auto_class = recipe.model_class or objective_cls.auto_class_name
    config = compat.task_config(configs[TARGET], configs[SOURCE_FT], recipe.objective)
    layout = compat.build_layout(auto_class, config, recipe.trust_remote_code)
    plan = compat.plan_transport(models, layout, check_values=check_values)

    objective = samples = eval_samples = None
    examples: list = []
    if recipe.data is not None:
        if tokenizer is None and recipe.objective != "callable":
            raise GradFixError(f"{TARGET}: no tokenizer found in {names[TARGET]} (nor in the source models).")
        dataset = load_split(recipe.data.path, name=recipe.data.name, split=recipe.data.split,
                             revision=recipe.data.revision, where="data")
        if objective_cls is CallableObjective:
            if recipe.data.label_column not in dataset.column_names:
                raise GradFixError(f"data: label column {recipe.data.label_column!r} not in {dataset.column_names}.")
            labels = label_space_from_rows(dataset, recipe.data.label_column)
            objective = CallableObjective(recipe.data, tokenizer, labels, recipe.loss_fn, auto_class)
        else:
            labels = objective_cls.label_space(recipe.data, configs[SOURCE_FT])
            objective = objective_cls(recipe.data, tokenizer, labels)
        extra = {"objective": recipe.objective, "prompt": recipe.data.prompt,
                 "label_words": recipe.data.label_words, "max_length": recipe.data.max_length}
        samples = select_per_class(dataset, recipe.data, labels, fingerprint_extra=extra)
        examples = [objective.encode(row, label) for row, label in zip(samples.rows, samples.labels)]
        if recipe.evaluation is not None:
            if objective_cls is CallableObjective:
                raise RecipeError("evaluation: held-out scores need a built-in objective, not 'callable'.")
            ev = recipe.evaluation
            path = ev.path or recipe.data.path
            eval_set = load_split(path, name=ev.name or recipe.data.name, split=ev.split,
                                  revision=ev.revision or recipe.data.revision, where="evaluation")
            eval_samples = evaluation_samples(eval_set, recipe.data, labels, ev.max_samples,
                                              describe_source(path, ev.split))
    return PreparedRun(recipe=recipe, models=models, plan=plan, tokenizer=tokenizer, objective=objective,
                       samples=samples, examples=examples, eval_samples=eval_samples)


def _aggregation(recipe: Recipe) -> str:
    return "mean" if recipe.method.mask == "mean" else "majority"


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
    }
    return VotesFile(votes=votes, metadata=metadata, evidence=evidence)


def load_votes_for(prepared: PreparedRun, path: Union[str, os.PathLike]) -> VotesFile:
    """A votes file checked against this run's target, parameter set and aggregation."""
    votes = VotesFile.load(path)
    target = prepared.models[TARGET]
    votes.check_target(prepared.voted_shapes, target=target.name, commit_hash=target.commit_hash, source=str(path))
    if votes.metadata["aggregation"] != _aggregation(prepared.recipe):
        raise VotesFileError(f"{path}: votes were aggregated with {votes.metadata['aggregation']!r} but mask "
                             f"{prepared.recipe.method.mask!r} needs {_aggregation(prepared.recipe)!r}.")
    if prepared.samples is not None and votes.metadata["data_fingerprint"] != prepared.samples.fingerprint:
        logger.warning("%s: votes were computed on other samples (fingerprint %s, recipe's data gives %s).",
                       path, votes.metadata["data_fingerprint"], prepared.samples.fingerprint)
    return votes


def _accuracy(objective: Objective, model, samples: LabelledSamples, batch_size: int = 32) -> float:
    correct = 0
    for start in range(0, len(samples), batch_size):
        rows = samples.rows[start:start + batch_size]
        predictions = objective.predict(model, rows)
        correct += sum(int(p == y) for p, y in zip(predictions, samples.labels[start:start + batch_size]))
    return correct / len(samples)


def evaluate_methods(prepared: PreparedRun, spec: MaskSpec, votes: Optional[VotesFile]) -> dict:
    """Held-out accuracy of θ_B (zero-shot, with the copied head), naive θ_B + α·τ_A, the result and the oracle."""
    model = load_base_model(prepared.plan)
    objective, samples = prepared.objective, prepared.eval_samples
    rows = [{"model": "θ_B zero-shot", "method": "zero-shot", "alpha": None,
             "score": _accuracy(objective, model, samples)}]
    specs = [("θ_B + α·τ_A (naive)", MaskSpec("naive", spec.alpha))]
    if spec.kind != "naive":
        specs.append((f"GradFix ({spec.kind})", spec))
    if TARGET_FT in prepared.plan.readers and spec.kind != "oracle":
        specs.append(("oracle (sign of τ_B)", MaskSpec("oracle", spec.alpha)))
    for label, s in specs:
        apply_in_memory(model, prepared.plan, s, votes)
        rows.append({"model": label, "method": s.kind, "alpha": s.alpha, "score": _accuracy(objective, model, samples)})
    return {"metric": "accuracy", "split": samples.source, "n_samples": len(samples), "rows": rows}


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
                    revision: Optional[str] = None, commit_message: Optional[str] = None):
        """Create ``repo_id`` if needed and upload the output folder in one commit."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        message = commit_message or (f"GradFix transport ({self.report['method']['mask']}, "
                                     f"α={self.report['method']['alpha']}) with gradfix_hf {__version__}")
        return api.upload_folder(repo_id=repo_id, folder_path=str(self.output_dir), revision=revision,
                                 commit_message=message)

    def __repr__(self) -> str:
        return f"TransportResult(output_dir={str(self.output_dir)!r}, kept_fraction={self.report['totals']['kept_fraction']:.4f})"


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
    votes_path = votes or recipe.votes
    prepared = prepare(recipe, token=token)
    if dry_run:
        return {"ok": True, **prepared.summary()}
    spec = MaskSpec(recipe.method.mask, float(recipe.method.alpha), recipe.method.no_evidence)
    context = process_context()
    vote_file = None
    if recipe.needs_votes and not votes_path:
        vote_file = compute_recipe_votes(prepared, progress=progress)  # every process takes part
    return on_main_process(context, lambda: _finish_run(prepared, spec, vote_file, votes_path, destination,
                                                        overwrite, progress, started))


def _finish_run(prepared: PreparedRun, spec: MaskSpec, vote_file: Optional[VotesFile],
                votes_path: Optional[Union[str, os.PathLike]], destination: Optional[Union[str, os.PathLike]],
                overwrite: bool, progress: bool, started: float) -> TransportResult:
    """Evaluation, streaming merge and the output folder (one process)."""
    recipe = prepared.recipe
    if recipe.needs_votes and votes_path:
        vote_file = load_votes_for(prepared, votes_path)
    evaluation = evaluate_methods(prepared, spec, vote_file) if prepared.eval_samples is not None else None
    if destination is None:
        destination = Path(tempfile.mkdtemp(prefix="gradfix-")) / "output"
    dtype = DTYPES[recipe.output.dtype] if recipe.output.dtype else None
    target = prepared.models[TARGET]
    with atomic_folder(Path(destination), overwrite=overwrite) as tmp:
        per_tensor = merge_to_folder(prepared.plan, tmp, spec, vote_file, dtype=dtype,
                                     max_shard_size=recipe.output.max_shard_size, progress=progress)
        prepared.plan.layout.config.save_pretrained(tmp)
        if prepared.tokenizer is not None:
            prepared.tokenizer.save_pretrained(tmp)
        _copy_generation_config(target, tmp)
        recipe_yaml = recipe.to_yaml()
        (tmp / RECIPE_NAME).write_text(recipe_yaml)
        report = {
            "library_version": __version__,
            "model_class": prepared.plan.layout.auto_class_name,
            "objective": recipe.objective,
            "method": {"mask": spec.kind, "alpha": spec.alpha, "no_evidence": spec.no_evidence},
            "models": {role: m.describe() for role, m in prepared.models.items()},
            "tensors": prepared.plan.summary(),
            "votes": None if vote_file is None else {
                "n_samples": vote_file.n_samples, "aggregation": vote_file.metadata["aggregation"],
                "data_fingerprint": vote_file.metadata["data_fingerprint"], "file": str(votes_path) if votes_path else None},
            "totals": _totals(per_tensor),
            "per_tensor": per_tensor,
            "evaluation": evaluation,
            "seconds": round(time.time() - started, 3),
        }
        write_report(tmp, report)
        datasets = [recipe.data.path] if recipe.data and not Path(recipe.data.path).expanduser().exists() else None
        write_model_card(tmp, report, recipe_yaml, prepared.objective.pipeline_task if prepared.objective else None,
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
    loss_fn = kwargs.pop("loss_fn", None)
    if isinstance(recipe, dict):
        recipe = Recipe.from_dict(recipe, loss_fn=loss_fn)
    elif not isinstance(recipe, Recipe):
        recipe = Recipe.from_yaml(recipe, loss_fn=loss_fn)
    elif loss_fn is not None:
        recipe = recipe.replace(loss_fn=loss_fn)
    return run_recipe(recipe, output_dir, **kwargs)
