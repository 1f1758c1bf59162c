"""Where a launcher (``accelerate launch``, ``torchrun``, MPI) placed this process, as its environment says.

Read from environment variables only (no torch, no process group), so the CLI can ask "am I the main process?"
on its error path before anything heavy is imported; :mod:`.processes` builds the process group itself.
"""
from __future__ import annotations

import os
from typing import Sequence

RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
WORLD_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def first_int(names: Sequence[str], default: int) -> int:
    """The first of the environment variables ``names`` that holds a non-negative integer, else ``default``."""
    for name in names:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return default


def launched_world_size() -> int:
    """How many processes the launcher started (1 without a launcher)."""
    return first_int(WORLD_VARIABLES, 1)


def launched_rank() -> int:
    """This process's rank as a launcher set it in the environment (0 without a launcher, or for one process)."""
    return first_int(RANK_VARIABLES, 0) if launched_world_size() > 1 else 0
