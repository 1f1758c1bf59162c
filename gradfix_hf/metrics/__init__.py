"""Held-out metrics through `evaluate`: the packaged offline modules, and scoring a model with all of them.

The metric scripts themselves live in ``accuracy/``, ``f1/`` and ``exact_match/`` (loaded by path with
``evaluate.load``, so they work without the Hub).
"""
from .loading import (BUILTIN_METRICS, DEFAULT_METRICS, METRICS_DIR, check_available, clear_metric_cache, load_metric,
                      metric_source)
from .scoring import MetricSet, Predictions, collect_predictions, generated_labels, generates, score_model

__all__ = ["BUILTIN_METRICS", "DEFAULT_METRICS", "METRICS_DIR", "MetricSet", "Predictions", "check_available",
           "clear_metric_cache", "collect_predictions", "generated_labels", "generates", "load_metric", "metric_source",
           "score_model"]
