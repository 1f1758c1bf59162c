"""Where this process stands among the processes a launcher started (``accelerate launch``, ``torchrun``, MPI).

:func:`process_context` asks ``accelerate.PartialState`` (which creates the process group under a launcher:
NCCL on GPUs, gloo on CPUs) for this process's rank, world size and device; :class:`ProcessContext` offers the
few collectives the stages need; :func:`on_main_process` runs work (writing a file, embedding a pool) on the
main process and shares its outcome, so a failure there never leaves the others waiting. Without a launcher
this is rank 0 of 1 on the CPU and no process group is created.
"""
from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..errors import GradFixError
from .launch import launched_world_size

logger = logging.getLogger("gradfix_hf")
_created_group = False


def shard_indices(n: int, rank: int, world: int) -> range:
    """The contiguous block of sample indices of process ``rank`` among ``world`` (empty when rank ≥ n)."""
    if world < 1 or not 0 <= rank < world or n < 0:
        raise ValueError(f"need 0 <= rank < world and n >= 0, got n={n}, rank={rank}, world={world}")
    q, extra = divmod(n, world)
    start = rank * q + min(rank, extra)
    return range(start, start + q + (1 if rank < extra else 0))


def _has_accelerator() -> bool:
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return bool(accelerator.is_available())
    return torch.cuda.is_available()


@dataclass(frozen=True)
class ProcessContext:
    """Where this process stands: rank, world size, its device, and the few collectives stage 1 needs."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Reduce ``tensor`` over processes (on this process's device) and return the result on the CPU."""
        if not self.distributed:
            return tensor
        ops = {"sum": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX}
        buffer = tensor.to(self.device, copy=True).contiguous()
        torch.distributed.all_reduce(buffer, op=ops[op])
        return buffer.cpu()

    def all_gather_object(self, obj: Any) -> list:
        if not self.distributed:
            return [obj]
        gathered: list = [None] * self.world
        torch.distributed.all_gather_object(gathered, obj)
        return gathered

    def broadcast_object(self, obj: Any) -> Any:
        """The main process's ``obj`` on every process."""
        if not self.distributed:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


def process_context() -> ProcessContext:
    """The current process's context from ``accelerate.PartialState``.

    Without a launcher this is rank 0 of 1 on the CPU, and no process group is created. Under a launcher,
    PartialState creates the process group (NCCL on GPUs; gloo on CPUs, which is chosen when
    ``ACCELERATE_USE_CPU`` is set or the machine has no accelerator).
    """
    global _created_group
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    had_group = torch.distributed.is_available() and torch.distributed.is_initialized()
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not _has_accelerator())
    if not had_group and torch.distributed.is_available() and torch.distributed.is_initialized():
        _created_group = True
    if state.num_processes <= 1:
        launched = launched_world_size()
        if launched > 1:
            logger.warning("launched as one of %d processes, but accelerate's state is single-process (was an "
                           "Accelerator or PartialState created earlier with cpu=False on a machine without "
                           "GPUs?): this process computes the votes of every sample on its own.", launched)
        return ProcessContext()
    return ProcessContext(rank=state.process_index, world=state.num_processes, device=torch.device(state.device))


def close_process_group(finished: bool = True) -> None:
    """Destroy the process groups if :func:`process_context` created them (at the end of a CLI command).

    After a command that ``finished`` on every process, they first meet at a barrier, so none tears its
    connections down while another still sends on them; then the objects that held the groups (a sharded
    model, a device mesh) are collected while the interpreter is whole: a gloo group finalized at interpreter
    exit can abort the process (``terminate called without an active exception``). A failed command skips
    the barrier: another process may never reach it.
    """
    global _created_group
    if _created_group and torch.distributed.is_initialized():
        if finished:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        gc.collect()
    _created_group = False


def on_main_process(context: ProcessContext, work: Callable[[], Any]) -> Any:
    """Run ``work`` on the main process only; the others wait for it and return None.

    The outcome is shared: if ``work`` fails on the main process it re-raises there, and every other
    process raises a :class:`GradFixError` saying so (instead of returning as if all went well).
    """
    if not context.distributed:
        return work()
    result, failure = None, None
    if context.is_main:
        try:
            result = work()
        except BaseException as exc:  # shared with the other processes, then re-raised
            failure = exc
    message = context.broadcast_object(None if failure is None else f"{type(failure).__name__}: {failure}")
    if failure is not None:
        raise failure
    if message is not None:
        raise GradFixError(f"the main process failed: {message}")
    return result