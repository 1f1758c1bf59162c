"""Which metrics a recipe may name, and loading them through `evaluate` without the Hub for the built-in ones.

``evaluate.load("accuracy")`` fetches the metric's script from the Hub and fails offline, so the metrics the
package needs (``accuracy``, ``f1``, ``exact_match``) ship as `evaluate` metric modules in this folder and are
loaded from their local path. Any other name goes to ``evaluate.load`` as is (a Hub metric, which needs network
the first time, or a local path to a metric script).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from ..errors import RecipeError

METRICS_DIR = Path(__file__).resolve().parent
BUILTIN_METRICS = ("accuracy", "f1", "exact_match")
DEFAULT_METRICS = ("accuracy", "f1")


def metric_source(name: str) -> str:
    """What ``evaluate.load`` gets for ``name``: the packaged module's folder for a built-in name, else the name."""
    return str(METRICS_DIR / name) if name in BUILTIN_METRICS else name


@functools.lru_cache(maxsize=None)
def load_metric(name: str, where: str = "evaluation.metrics") -> Any:
    """The ``evaluate.EvaluationModule`` for ``name`` (kept in memory: no cache files), loaded once per process."""
    import evaluate

    try:
        return evaluate.load(metric_source(name), keep_in_memory=True)
    except Exception as exc:  # evaluate raises FileNotFoundError, ConnectionError, ImportError, offline errors...
        raise RecipeError(
            f"{where}: cannot load metric {name!r} with evaluate ({exc.__class__.__name__}: {exc}). Built in and "
            f"offline: {', '.join(BUILTIN_METRICS)}; any other evaluate metric is fetched from the Hub (needs "
            "network, or a local path to its folder/script).") from None


def check_metric_names(names: Any, where: str = "evaluation.metrics") -> tuple[str, ...]:
    """A non-empty tuple of distinct metric names; names other than the built-in ones are loaded now, so that a
    metric that cannot be loaded fails when the recipe is read, not after the votes."""
    if isinstance(names, str):
        names = [names]
    if (not isinstance(names, (list, tuple)) or not names
            or any(not isinstance(n, str) or not n.strip() for n in names)):
        raise RecipeError(f"{where}: a non-empty list of metric names (e.g. [accuracy, f1]), got {names!r}.")
    names = tuple(n.strip() for n in names)
    for name in names:
        if names.count(name) > 1:
            raise RecipeError(f"{where}: {name!r} is listed twice.")
        if name not in BUILTIN_METRICS:
            load_metric(name, where)
    return names
