"""Prepare one task vector of a recipe: resolve its models and data and check everything that needs no gradient.

Models, names, shapes, vocabulary, NaN/inf, data, labels and metrics are checked here, so bad input fails before
the costly part; a merge prepares each of its tasks. The result (:class:`PreparedRun`) is what the votes, the
held-out scores and the merge of a run read.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from ..data import (CARVED_SPLIT, LabelledSamples, carve_validation, describe_source, evaluation_rows,
                    evaluation_samples, label_space_from_rows, load_split, select_per_class, select_rows,
                    target_embedder, with_images)
from ..errors import GradFixError, RecipeError
from ..hub import ResolvedModel, resolve_model
from ..metrics import check_available
from ..objectives import (OBJECTIVES, CallableObjective, CLIPZeroShotObjective, Objective, SFTObjective,
                          load_named_tokenizer)
from ..plan import (SOURCE, SOURCE_FT, TARGET, TARGET_FT, TransportPlan, bind_adapters, build_layout, check_configs,
                    load_config, plan_transport, task_config, vocabulary_alignment)
from ..recipe import Recipe, ResolvedTask

logger = logging.getLogger("gradfix_hf")
TOKENIZER_FILES = ("tokenizer*", "vocab*", "merges.txt", "*.model", "*.tiktoken")


@dataclass
class PreparedRun:
    """Everything checked and loaded before gradient work."""

    recipe: Recipe
    task: ResolvedTask
    models: dict[str, ResolvedModel]
    plan: TransportPlan
    tokenizer: Any
    objective: Optional[Objective]
    samples: Optional[LabelledSamples]
    examples: list = field(default_factory=list)
    eval_samples: Optional[LabelledSamples] = None
    test_samples: Optional[LabelledSamples] = None
    #: what the data settings became on θ_B, for the report: {"max_length": {"requested", "used", "why"}} when
    #: data.max_length was capped at the target's positions (the recipe keeps its value); empty when none
    data_notes: dict = field(default_factory=dict)

    @property
    def parameter_count(self) -> int:
        """θ_B's parameters in the output layout (what decides small-model threads)."""
        return sum(math.prod(shape) for shape in self.plan.layout.parameters.values())

    @property
    def voted_shapes(self) -> dict[str, tuple[int, ...]]:
        """The tensors the vote covers: those τ_A moves (a tensor with τ_A ≡ 0 merges to θ_B whatever its mask). A
        vote shared by several sources (``multi_source``) covers every transported tensor: another source may
        move what this one does not."""
        shared = self.recipe.method.method.shared_vote
        names = self.plan.transported if shared else self.plan.moved
        return {n: self.plan.layout.parameters[n] for n in names}

    @property
    def not_voted(self) -> list[str]:
        """Transported tensors the vote leaves out (τ_A is zero everywhere on them)."""
        voted = self.voted_shapes
        return [n for n in self.plan.transported if n not in voted]

    def summary(self) -> dict:
        return {
            "models": {role: m.describe() for role, m in self.models.items()},
            "model_class": type(self.plan.layout.config).__name__ + " → " + self.plan.layout.config.architectures[0],
            "tensors": self.plan.summary(),
            "vote_samples": len(self.samples) if self.samples else 0,
            "data_fingerprint": self.samples.fingerprint if self.samples else None,
            "selection": self.samples.selection if self.samples is not None else None,
            "evaluation_samples": len(self.eval_samples) if self.eval_samples else 0,
            **({"data_notes": self.data_notes} if self.data_notes else {}),
        }


def _load_tokenizer(models: dict[str, ResolvedModel], role: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    folder = models[role].local_dir
    if not any(next(folder.glob(p), None) for p in TOKENIZER_FILES):
        return None  # no tokenizer files (AutoTokenizer would make an empty one from config.json alone)
    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def prepare(recipe: Recipe, task: Optional[ResolvedTask] = None, *, token: Optional[str] = None,
            check_values: bool = True, select_samples: bool = True, run_code: bool = True) -> PreparedRun:
    """Resolve the models and the data of one task vector (default: the recipe's first) and check everything
    that needs no gradient. ``select_samples=False`` (a dry run) skips embedding the pool of a non-random
    ``data.selection``: the class sizes are checked, the rows are chosen at run time. ``run_code=False`` (a dry
    run) runs no code shipped with a model or a metric, even with ``trust_remote_code``."""
    task = task or recipe.resolved_tasks()[0]
    trust = recipe.trust_remote_code and run_code  # code of a model, a tokenizer or a metric runs only with both
    if recipe.evaluation is not None:  # a metric that cannot be loaded fails now, not after the votes
        check_available(recipe.evaluation.metrics, trust_remote_code=recipe.trust_remote_code, run_code=run_code)
    refs = {SOURCE: task.models.source, SOURCE_FT: task.models.source_finetuned, TARGET: task.models.target}
    if task.models.target_finetuned is not None:
        refs[TARGET_FT] = task.models.target_finetuned
    models = {role: resolve_model(ref, role=role, allow_pickle=recipe.allow_pickle, token=token,
                                  trust_remote_code=trust)
              for role, ref in refs.items()}
    bind_adapters(models)  # a LoRA adapter as θ_A^ft is read on θ_A (gradfix_hf/lora)
    names = {role: m.name for role, m in models.items()}
    configs = {role: load_config(m, trust) for role, m in models.items()}
    check_configs(configs, names, token_rows_aligned=True)  # one architecture; each fine-tune has its base's rows
    tokenizers = {role: _load_tokenizer(models, role, trust) for role in models}
    vocabulary = vocabulary_alignment(tokenizers, configs, names)  # θ_B's token rows in θ_A's, by token string
    if vocabulary is None:  # then θ_A's and θ_B's token ids must line up as they are
        check_configs(configs, names)
    if vocabulary is not None and vocabulary.dropped:
        logger.warning("θ_B's vocabulary lacks %d of θ_A's tokens (e.g. %s): their rows of τ_A are not carried.",
                       len(vocabulary.dropped), ", ".join(repr(t) for t in vocabulary.dropped[:5]))
    tokenizer = tokenizers[TARGET] or tokenizers[SOURCE_FT] or tokenizers[SOURCE]

    objective_cls = OBJECTIVES[recipe.objective]
    clip = objective_cls is CLIPZeroShotObjective
    if clip:  # a CLIP θ_B, its image processor and tokenizer (gradfix_hf/objectives/clip_zero_shot.py)
        image_processor = CLIPZeroShotObjective.check_target(configs[TARGET], models[TARGET], tokenizer)
    auto_class = recipe.model_class or objective_cls.auto_class_name
    config = task_config(configs[TARGET], configs[SOURCE_FT], recipe.objective)
    layout = build_layout(auto_class, config, trust)
    plan = plan_transport(models, layout, check_values=check_values, vocabulary=vocabulary, align=recipe.align,
                          transported_prefixes=getattr(objective_cls, "transported_prefixes", None))

    objective = samples = eval_samples = test_samples = None
    examples: list = []
    data_notes: dict = {}
    data = task.data
    if data is not None:
        if data.tokenizer is not None:  # objective sft: it renders the rows, and the output carries it
            tokenizer = load_named_tokenizer(data, getattr(configs[TARGET], "vocab_size", None), token=token,
                                             trust_remote_code=trust)
        if tokenizer is None and recipe.objective != "callable":
            raise GradFixError(f"{TARGET}: no tokenizer found in {names[TARGET]} (nor in the source models).")
        dataset = load_split(data.path, name=data.name, split=data.split,
                             revision=data.revision, where="data", token=token)
        columns = [data.image_column, data.label_column] if clip else None  # what the objective reads
        sft = objective_cls is SFTObjective
        carved = None
        if data.validation_size is not None:  # held-out rows carved from the split; the vote draws from the rest
            dataset, carved = carve_validation(dataset, data.validation_size, data.seed,
                                               label_column=None if sft else data.label_column)
        if clip:
            dataset = with_images(dataset, data.image_column, data.path, "data")
            labels = CLIPZeroShotObjective.label_space(data, configs[SOURCE_FT], dataset)
            objective = CLIPZeroShotObjective.from_target(data, tokenizer, labels, plan, image_processor)
        elif sft:  # chat / instruction data: N rows, no classes (gradfix_hf/objectives/sft.py)
            labels = SFTObjective.label_space(data, None)
            objective = SFTObjective.for_data(data, tokenizer, dataset.column_names)
            if objective.chat_template is not None:  # the output carries the template the run used
                tokenizer.chat_template = objective.chat_template
        elif objective_cls is CallableObjective:
            if data.label_column not in dataset.column_names:
                raise GradFixError(f"data: label column {data.label_column!r} not in {dataset.column_names}.")
            labels = label_space_from_rows(dataset, data.label_column)
            objective = CallableObjective(data, tokenizer, labels, recipe.loss_fn, auto_class)
        else:
            labels = objective_cls.label_space(data, configs[SOURCE_FT])
            objective = objective_cls(data, tokenizer, labels)
        capped = objective.fit_positions(configs[TARGET], TARGET)  # data.max_length at most θ_B's positions
        if capped is not None:
            data_notes["max_length"] = capped
        extra = {"objective": recipe.objective, "prompt": data.prompt,
                 "label_words": data.label_words, "max_length": data.max_length}
        if sft:  # what the loss of a row depends on
            extra = {"objective": recipe.objective, "format": objective.format, "loss_tokens": data.loss_tokens,
                     "max_length": data.max_length, "chat_template": objective.chat_template}
        if carved is not None:  # the rows' indices are among those the carve left
            extra["validation_size"] = data.validation_size
        if clip:  # the prompts are part of the loss, hence of what the votes depend on
            extra.update(templates=objective.templates, image_column=data.image_column)
        embed = None
        if data.selection != "random":  # θ_B's own embeddings choose the rows (gradfix_hf/data/selection.py)
            embed = target_embedder(plan, objective, batch_size=recipe.vote_batch_size)
        if sft:
            samples = select_rows(dataset, data, columns=objective.data_columns(),
                                  text_columns=objective.text_columns(), fingerprint_extra=extra,
                                  embed=embed if select_samples else None)
            if samples.rows:  # in length order; rows with no loss token left are counted and skipped
                examples, kept, data_notes["sft"] = objective.encode_rows(samples.rows, samples.indices,
                                                                           samples.source)
                samples = dataclasses.replace(samples, rows=[samples.rows[i] for i in kept],
                                              labels=[0] * len(kept), indices=[samples.indices[i] for i in kept])
        else:
            samples = select_per_class(dataset, data, labels, fingerprint_extra=extra,
                                       embed=embed if select_samples else None, columns=columns,
                                       text_columns=objective.text_columns())
            examples = [objective.encode(row, label) for row, label in zip(samples.rows, samples.labels)]
        if recipe.evaluation is not None:
            if objective_cls is CallableObjective:
                raise RecipeError("evaluation: held-out scores need a built-in objective, not 'callable'.")
            ev = recipe.evaluation

            def held_out(path: str, split: str, where: str) -> LabelledSamples:
                if carved is not None and path == data.path and split == CARVED_SPLIT:
                    rows = carved
                    source = f"{describe_source(path, data.split)} (validation carve of {len(carved)} rows, " \
                             f"seed {data.seed})"
                else:
                    rows = load_split(path, name=ev.name or data.name, split=split,
                                      revision=ev.revision or data.revision, where=where, token=token)
                    source = describe_source(path, split)
                if clip:
                    rows = with_images(rows, data.image_column, path, where)
                if sft:
                    return evaluation_rows(rows, ev.max_samples, source, where=where,
                                           columns=objective.data_columns(), text_columns=objective.text_columns())
                return evaluation_samples(rows, data, labels, ev.max_samples, source, where,
                                          columns=columns, text_columns=objective.text_columns())

            eval_samples = held_out(ev.path or data.path, ev.split, "evaluation")
            if ev.test_split is not None:
                test_samples = held_out(ev.test_path or ev.path or data.path, ev.test_split, "evaluation.test_split")
    if clip:  # the output folder gets θ_B's tokenizer and image processor (for pipeline(...))
        tokenizer = CLIPZeroShotObjective.processor(image_processor, tokenizer)
    return PreparedRun(recipe=recipe, task=task, models=models, plan=plan, tokenizer=tokenizer, objective=objective,
                       samples=samples, examples=examples, eval_samples=eval_samples, test_samples=test_samples,
                       data_notes=data_notes)