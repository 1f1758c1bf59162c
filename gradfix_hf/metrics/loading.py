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
from ..recipe.data import LOSS_METRICS

METRICS_DIR = Path(__file__).resolve().parent
BUILTIN_METRICS = ("accuracy", "f1", "exact_match", "rouge")
DEFAULT_METRICS = ("accuracy", "f1")
#: metrics for which a lower value is better (the α and candidate choices minimise them)
LOWER_IS_BETTER = frozenset(LOSS_METRICS)


def higher_is_better(name: str) -> bool:
    """Whether a larger value of metric ``name`` is better (every metric but NLL and perplexity)."""
    return name.split(".", 1)[0] not in LOWER_IS_BETTER


def metric_source(name: str) -> str:
    """What ``evaluate.load`` gets for ``name``: the packaged module's folder for a built-in name, else the name."""
    return str(METRICS_DIR / name) if name in BUILTIN_METRICS else name


def load_metric(name: str, where: str = "evaluation.metrics", *, trust_remote_code: bool = False) -> Any:
    """The ``evaluate.EvaluationModule`` for ``name`` (kept in memory: no cache files), loaded once per process.

    A built-in metric is the package's own script. Any other name makes ``evaluate`` fetch and run a script (from
    the Hub, or a local path), so it is loaded only with ``trust_remote_code``."""
    if name not in BUILTIN_METRICS and not trust_remote_code:
        raise RecipeError(f"{where}: {name!r} is not a built-in metric ({', '.join(BUILTIN_METRICS)}); loading it "
                          "runs its script (evaluate.load), which gradfix does only with trust_remote_code: true.")
    return _load(name, where)


@functools.lru_cache(maxsize=None)
def _load(name: str, where: str) -> Any:
    import evaluate

    try:
        return evaluate.load(metric_source(name), keep_in_memory=True)
    except Exception as exc:  # evaluate raises FileNotFoundError, ConnectionError, ImportError, offline errors...
        raise RecipeError(
            f"{where}: cannot load metric {name!r} with evaluate ({exc.__class__.__name__}: {exc}). Built in and "
            f"offline: {', '.join(BUILTIN_METRICS)}; any other evaluate metric is fetched from the Hub (needs "
            "network, or a local path to its folder/script).") from None


def clear_metric_cache() -> None:
    """Forget the metrics loaded in this process (the next :func:`load_metric` loads again)."""
    _load.cache_clear()


def check_available(names: Sequence[str], where: str = "evaluation.metrics", *, trust_remote_code: bool = False,
                    run_code: bool = True) -> None:
    """Before the votes: every metric other than the built-in ones needs ``trust_remote_code`` (its script runs
    when loaded), and is loaded now so that one that cannot be loaded fails when a run is prepared. With
    ``run_code`` False (a dry run) nothing is loaded: the flag is still checked."""
    for name in names:
        if name in BUILTIN_METRICS or name in LOSS_METRICS:
            continue
        if not trust_remote_code:
            load_metric(name, where)  # the refusal, with its reason
        if run_code:
            load_metric(name, where, trust_remote_code=True)
