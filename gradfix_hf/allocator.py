"""Keep freed large blocks for reuse inside the process (glibc), so temporaries stop costing page faults.

Why: both stages allocate model-sized temporaries tensor after tensor (τ, masks, products, outputs). glibc
serves every block above its mmap threshold with a fresh ``mmap`` and returns it on ``free``, so each new
temporary is zero-filled page by page again: on a 2-core CPU that page faulting, not arithmetic, was most of
the streaming merge's time (a 100 MB subtraction: 130 ms fresh, 24 ms into reused memory). Raising the mmap
and trim thresholds makes glibc keep those blocks in its heap and hand them out again. Peak memory is the
same (the blocks were in use at the peak anyway); memory is returned to the system when the process ends.

The ``gradfix`` command calls :func:`reuse_freed_memory` once at start-up; Python users who run many merges
or sweeps in one process may call it too. ``GRADFIX_REUSE_FREED_MEMORY=0`` turns it off. Other C libraries
(musl, macOS) are left alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

logger = logging.getLogger("gradfix_hf")

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the reusable heap
_TRIM_THRESHOLD = 1 << 31
_done = False


def reuse_freed_memory() -> bool:
    """Ask glibc to keep freed blocks up to 1 GiB for reuse; True when the setting took effect (idempotent)."""
    global _done
    if _done:
        return True
    if os.environ.get("GRADFIX_REUSE_FREED_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt, version = libc.mallopt, libc.gnu_get_libc_version  # AttributeError outside glibc
    except (OSError, AttributeError):
        return False
    version.restype = ctypes.c_char_p
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    logger.debug("glibc %s: keep freed blocks for reuse: %s", version().decode(), _done)
    return _done
