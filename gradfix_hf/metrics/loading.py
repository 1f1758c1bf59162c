"""Which metrics ship with the package, and loading them through `evaluate` without the Hub for the built-in ones.

``evaluate.load("accuracy")`` fetches the metric's script from the Hub and fails offline, so the metrics the
package needs (``accuracy``, ``f1``, ``exact_match``) ship as `evaluate` metric modules in this folder and are
loaded from their local path. Any other name goes to ``evaluate.load`` as is (a Hub metric, which needs network
the first time, or a local path to a metric script).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Sequence

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


def check_available(names: Sequence[str], where: str = "evaluation.metrics") -> None:
    """Load every metric other than the built-in ones now, so that a metric that cannot be loaded fails when a
    run is prepared, not after the votes (the names' form is checked when the recipe is read)."""
    for name in names:
        if name not in BUILTIN_METRICS:
            load_metric(name, where)
