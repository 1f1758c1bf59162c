"""The process this code runs in: its place among several launched processes (Accelerate, torchrun) and the
memory allocator's reuse of freed blocks, and how many CPU threads torch uses (:mod:`.threads`). Nothing here knows
about models, recipes or votes."""
from .allocator import reuse_freed_memory, reuse_from_environment
from .processes import (ProcessContext, close_process_group, launched_rank, on_main_process, process_context,
                        shard_indices)
from .threads import ENV as THREADS_ENV
from .threads import SMALL_MODEL_THREADS, apply_configured_threads, configured_threads, small_model_threads

__all__ = ["ProcessContext", "close_process_group", "launched_rank", "on_main_process", "process_context",
           "shard_indices", "reuse_freed_memory", "reuse_from_environment", "THREADS_ENV", "SMALL_MODEL_THREADS",
           "apply_configured_threads", "configured_threads", "small_model_threads"]
