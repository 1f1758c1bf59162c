"""The process this code runs in: its place among several launched processes (Accelerate, torchrun) and the
memory allocator's reuse of freed blocks. Nothing here knows about models, recipes or votes."""
from .allocator import reuse_freed_memory, reuse_from_environment
from .processes import (ProcessContext, close_process_group, launched_rank, on_main_process, process_context,
                        shard_indices)

__all__ = ["ProcessContext", "close_process_group", "launched_rank", "on_main_process", "process_context",
           "shard_indices", "reuse_freed_memory", "reuse_from_environment"]
