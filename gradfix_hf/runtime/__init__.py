"""The process this code runs in: its place among several launched processes (Accelerate, torchrun; what the
environment says, :mod:`.launch`, and the process group, :mod:`.processes`), the memory allocator's reuse of freed
blocks, how many CPU threads torch uses (:mod:`.threads`), whether progress bars show (:mod:`.progress`), and which
names a package imports when first used (:mod:`.exports`). Nothing here knows about models, recipes or votes.

Names are imported from their modules on first use: ``launched_rank`` or ``silence_progress_bars`` import no torch.
"""
from typing import TYPE_CHECKING

from .exports import lazy_exports

if TYPE_CHECKING:  # what the names below are; imported on first use
    from .allocator import reuse_freed_memory, reuse_from_environment
    from .launch import launched_rank
    from .processes import ProcessContext, close_process_group, on_main_process, process_context, shard_indices
    from .progress import silence_progress_bars
    from .threads import ENV as THREADS_ENV
    from .threads import (SMALL_MODEL_THREADS, apply_configured_threads, configured_threads, small_model_threads,
                          threads_for_model)

__getattr__, __dir__ = lazy_exports(__name__, {
    "launched_rank": ".launch", "silence_progress_bars": ".progress",
    "THREADS_ENV": ".threads:ENV", "reuse_freed_memory": ".allocator", "reuse_from_environment": ".allocator",
    **dict.fromkeys(["ProcessContext", "close_process_group", "on_main_process", "process_context", "shard_indices"],
                    ".processes"),
    **dict.fromkeys(["SMALL_MODEL_THREADS", "apply_configured_threads", "configured_threads", "small_model_threads",
                     "threads_for_model"], ".threads")})


__all__ = ["ProcessContext", "close_process_group", "launched_rank", "on_main_process", "process_context",
           "shard_indices", "reuse_freed_memory", "reuse_from_environment", "THREADS_ENV", "SMALL_MODEL_THREADS",
           "apply_configured_threads", "configured_threads", "small_model_threads", "threads_for_model",
           "silence_progress_bars"]
