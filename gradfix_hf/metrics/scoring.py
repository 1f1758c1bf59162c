"""Score a model on a held-out split: predictions are collected once, then every metric of the run reads them.

Class metrics (accuracy, f1, any `evaluate` metric on integer labels) read the objective's predicted class
(the argmax of a classifier, the scored choice of a text-to-text model). Text metrics (``exact_match``, any
metric whose ``predictions`` are strings) read the generated text for a seq2seq model — greedy, at most as
many new tokens as the longest label word, decoded and stripped — and the predicted label's name otherwise.
A seq2seq run always reports ``exact_match`` of the generated label next to the scored-choice metrics.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from ..errors import GradFixError, RecipeError
from ..objectives import Objective, Seq2SeqObjective
from .language_modeling import is_sft, sft_scores
from ..recipe.data import LOSS_METRICS, metric_objective_error
from .loading import DEFAULT_METRICS, load_metric


@dataclass
class Predictions:
    """What a model predicted on a split, next to the gold labels (class indices and their texts)."""

    labels: list[int]
    references: list[int]
    texts: Optional[list[str]] = None
    reference_texts: Optional[list[str]] = None


def generates(objective: Objective) -> bool:
    """True for objectives whose label is judged by generation as well (seq2seq: exact match of the label)."""
    return isinstance(objective, Seq2SeqObjective)


def _takes_text(module: Any) -> bool:
    features = module.features if isinstance(module.features, list) else [module.features]
    feature = features[0]["predictions"] if features and "predictions" in features[0] else None
    return getattr(feature, "dtype", None) == "string"


class MetricSet:
    """The metrics of a run, loaded once: the recipe's names in order (the first one picks α), plus
    ``exact_match`` for an objective that generates its label."""

    def __init__(self, names: Sequence[str] = DEFAULT_METRICS, objective: Optional[Objective] = None, *,
                 trust_remote_code: bool = False, max_new_tokens: Optional[int] = None):
        names = tuple(names)
        sft = is_sft(objective)
        if objective is not None and generates(objective) and "exact_match" not in names:
            names += ("exact_match",)
        problem = metric_objective_error(getattr(objective, "name", ""), names)
        if problem:
            raise RecipeError(f"evaluation.metrics: {problem}")
        self.names = names
        self.objective_is_sft = sft
        self.max_new_tokens = max_new_tokens
        self.modules = {name: load_metric(name, trust_remote_code=trust_remote_code) for name in names
                        if name not in LOSS_METRICS}
        self.text_metrics = {name for name, module in self.modules.items() if _takes_text(module)}

    def compute(self, predictions: Predictions, num_labels: int) -> dict[str, float]:
        """Every metric on the same predictions: ``{name: value}`` (``name.key`` for a metric with several)."""
        scores: dict[str, float] = {}
        for name, module in self.modules.items():
            if name in self.text_metrics:
                inputs = {"predictions": predictions.texts, "references": predictions.reference_texts}
            else:
                inputs = {"predictions": predictions.labels, "references": predictions.references}
            kwargs = {"num_labels": num_labels} if name == "f1" else {}  # the packaged f1 (binary vs macro)
            result = module.compute(**inputs, **kwargs) or {}
            values = {k: float(v) for k, v in result.items()
                      if isinstance(v, numbers.Real) and not isinstance(v, bool)}
            if not values:
                raise GradFixError(f"evaluation.metrics: metric {name!r} returned no number ({result!r}).")
            scores.update({name: next(iter(values.values()))} if len(values) == 1 else
                          {f"{name}.{key}": value for key, value in values.items()})
        return scores


@torch.no_grad()
def generated_labels(objective: Objective, model: torch.nn.Module, rows: list[dict]) -> list[str]:
    """Greedy generation of each row's label (at most the longest label word's token count), decoded, stripped."""
    tokenizer = objective.tokenizer
    max_new_tokens = max(len(tokenizer(word).input_ids) for word in objective.labels.names)
    enc = tokenizer([objective.text_of(row) for row in rows], truncation=True, max_length=objective.data.max_length,
                    padding=True, return_tensors="pt")
    inputs = {"input_ids": enc.input_ids.to(model.device), "attention_mask": enc.attention_mask.to(model.device)}
    output = model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens)
    return [text.strip() for text in tokenizer.batch_decode(output, skip_special_tokens=True)]


def collect_predictions(objective: Objective, model: torch.nn.Module, samples, *, texts: bool = False,
                        batch_size: int = 32) -> Predictions:
    """One pass over ``samples`` (a :class:`~gradfix_hf.data.LabelledSamples`): the predicted class of every row
    and, with ``texts``, the text that text metrics compare (generated for seq2seq, else the class name)."""
    names = objective.labels.names
    out = Predictions(labels=[], references=list(samples.labels))
    generated: list[str] = []
    for start in range(0, len(samples), batch_size):
        rows = samples.rows[start:start + batch_size]
        out.labels.extend(int(p) for p in objective.predict(model, rows))
        if texts and generates(objective):
            generated.extend(generated_labels(objective, model, rows))
    if texts:
        out.texts = generated if generates(objective) else [names[p] for p in out.labels]
        out.reference_texts = [names[y] for y in out.references]
    return out


def score_model(objective: Objective, model: torch.nn.Module, samples, metrics: MetricSet,
                batch_size: int = 32) -> dict[str, float]:
    """Every metric of ``metrics`` for ``model`` on ``samples``, from one collection of predictions."""
    if metrics.objective_is_sft:  # NLL, perplexity and generated text (gradfix_hf/metrics/language_modeling.py)
        return sft_scores(objective, model, samples, metrics.names, metrics.modules,
                          max_new_tokens=metrics.max_new_tokens)
    predictions = collect_predictions(objective, model, samples, texts=bool(metrics.text_metrics),
                                      batch_size=batch_size)
    return metrics.compute(predictions, num_labels=len(objective.labels.names))
