"""How many CPU threads torch uses.

Tiny models (the quickstart's, the tests') spend their time in thread hand-offs rather than arithmetic when torch
uses one intra-op thread per core, and much more so on a machine another process keeps busy: measured on 2 cores,
the quickstart took 1:44–8:36 with torch's default threads under load and 20–22 s with one thread. Float sums
split over threads also add in another order, so a figure can move with the core count. Small-model work (the
quickstart, and any run whose target has fewer than ``SMALL_MODEL_PARAMETERS`` parameters) therefore runs on
``SMALL_MODEL_THREADS`` thread(s); ``GRADFIX_NUM_THREADS`` overrides that and, when set, applies to every command.
Larger models keep torch's default (one thread per core) unless it is set.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import torch

from ..errors import GradFixError

ENV = "GRADFIX_NUM_THREADS"
SMALL_MODEL_THREADS = 1
#: a model with fewer parameters runs on SMALL_MODEL_THREADS (unless GRADFIX_NUM_THREADS says otherwise)
SMALL_MODEL_PARAMETERS = 5_000_000


def configured_threads() -> Optional[int]:
    """``GRADFIX_NUM_THREADS`` as a positive integer, or None when it is not set."""
    value = os.environ.get(ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise GradFixError(f"{ENV}={value!r}: must be a positive integer (torch's CPU threads).")
    return int(value)


def apply_configured_threads() -> None:
    """Use ``GRADFIX_NUM_THREADS`` threads if it is set (what the CLI does for every command)."""
    threads = configured_threads()
    if threads is not None:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def threads_for_model(parameters: int) -> Iterator[int]:
    """Small-model threads (:func:`small_model_threads`) for a model of fewer than ``SMALL_MODEL_PARAMETERS``
    parameters when ``GRADFIX_NUM_THREADS`` is not set; otherwise the threads as they are."""
    if parameters >= SMALL_MODEL_PARAMETERS or configured_threads() is not None:
        yield torch.get_num_threads()
        return
    with small_model_threads() as threads:
        yield threads


@contextlib.contextmanager
def small_model_threads() -> Iterator[int]:
    """Run the block on ``GRADFIX_NUM_THREADS`` or ``SMALL_MODEL_THREADS`` thread(s), with torch's deterministic
    algorithms where it has them, and put both settings back afterwards."""
    threads = configured_threads() or SMALL_MODEL_THREADS
    previous = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
