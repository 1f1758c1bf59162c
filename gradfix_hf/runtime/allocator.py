"""Keep freed large blocks for reuse inside the process (glibc), so temporaries stop costing page faults.

Why: both stages allocate model-sized temporaries tensor after tensor (τ, masks, products, outputs). glibc
serves every block above its mmap threshold with a fresh ``mmap`` and returns it on ``free``, so each new
temporary is zero-filled page by page again (a 100 MB subtraction on a 2-core CPU: 130 ms fresh, 24 ms into
reused memory). Raising the mmap and trim thresholds makes glibc keep those blocks in its heap and hand them
out again; memory is returned to the system when the process ends.

Opt-in (``GRADFIX_REUSE_FREED_MEMORY=1``, which the ``gradfix`` command honours at start-up, or a call to
:func:`reuse_freed_memory` from Python). Measured on the 134 M-parameter merge of ``bench/merge.py`` (2-core CPU)
once the merge had stopped making avoidable temporaries: no wall-time gain and about 100 MB more peak RSS (blocks
kept for reuse fragment the heap), so it is off by default; a 100 MB subtraction alone ran 5× faster with it.
Other C libraries (musl, macOS) are left alone. Reuse is not guaranteed: in about a third of fresh processes
a second 64 MiB block still lands on fresh pages (seen on the development machine; cause not yet found).
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
_RETURN_THRESHOLD = 1 << 20  # return_freed_memory: blocks from 1 MiB up are mapped and unmapped on their own
_done = False


def reuse_from_environment() -> bool:
    """Call :func:`reuse_freed_memory` when ``GRADFIX_REUSE_FREED_MEMORY=1`` (what the ``gradfix`` command does)."""
    return os.environ.get("GRADFIX_REUSE_FREED_MEMORY") == "1" and reuse_freed_memory()


def reuse_freed_memory() -> bool:
    """Ask glibc to keep freed blocks up to 1 GiB for reuse; True when the setting took effect (idempotent)."""
    global _done
    if _done:
        return True
    if os.environ.get("GRADFIX_REUSE_FREED_MEMORY") == "0":
        return False
    _done = _set_thresholds(_MMAP_THRESHOLD, _TRIM_THRESHOLD, "keep freed blocks for reuse")
    return _done


def return_freed_memory() -> bool:
    """Serve every block from 1 MiB up with its own ``mmap``, returned to the system when freed (glibc).

    Why: a sharded (FSDP2) vote on CPUs gathers each block's weights for its forward and backward and frees them
    after. glibc's default moves its mmap threshold up to the size of the blocks freed (up to 32 MiB), so those
    weights come from the heap, and the heap keeps what they leave: measured on a 1.2 B-parameter Llama, a process
    holding half the model grew by the whole model's size in one forward. A fixed threshold keeps the process's
    memory what it uses, at the price of zero-filling fresh pages for each such block. Not applied when the user
    asked glibc to keep freed blocks (``GRADFIX_REUSE_FREED_MEMORY=1``). True when the setting took effect.
    """
    if _done or os.environ.get("GRADFIX_REUSE_FREED_MEMORY") == "1":
        return False
    return _set_thresholds(_RETURN_THRESHOLD, _RETURN_THRESHOLD, "return freed blocks of 1 MiB and more")


def _set_thresholds(mmap_threshold: int, trim_threshold: int, what: str) -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt, version = libc.mallopt, libc.gnu_get_libc_version  # AttributeError outside glibc
    except (OSError, AttributeError):
        return False
    version.restype = ctypes.c_char_p
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    logger.debug("glibc %s: %s: %s", version().decode(), what, done)
    return done
