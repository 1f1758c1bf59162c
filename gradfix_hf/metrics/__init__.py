"""Held-out metrics through `evaluate`: the packaged offline modules, and scoring a model with all of them.

The metric scripts themselves live in ``accuracy/``, ``f1/``, ``exact_match/`` and ``rouge/`` (loaded by path with
``evaluate.load``, so they work without the Hub). SFT data is scored by NLL, perplexity and generated text
(:mod:`.language_modeling`); NLL and perplexity are better lower (:func:`higher_is_better`).
"""
from .language_modeling import generated_texts, loss_scores
from .loading import (BUILTIN_METRICS, DEFAULT_METRICS, LOSS_METRICS, LOWER_IS_BETTER, METRICS_DIR, check_available,
                      clear_metric_cache, higher_is_better, load_metric, metric_source)
from .scoring import MetricSet, Predictions, collect_predictions, generated_labels, generates, score_model

__all__ = ["BUILTIN_METRICS", "DEFAULT_METRICS", "METRICS_DIR", "MetricSet", "Predictions", "check_available",
           "clear_metric_cache", "collect_predictions", "generated_labels", "generates", "load_metric", "metric_source",
           "score_model", "LOSS_METRICS", "LOWER_IS_BETTER", "higher_is_better", "generated_texts", "loss_scores"]
