"""Stage 1 over several processes (``accelerate launch``, ``torchrun``, MPI): shard the samples, all-reduce.

Every process loads θ_B, computes the votes of its own shard of the samples with a per-process *engine*
(the exact reference engine by default; any function with the same contract can be plugged in), and the
shards are combined with collective operations, so every process ends with the same full result:

- **Sharding** is deterministic and contiguous: with N samples and W processes, process r takes samples
  ``[r·q + min(r, N mod W), (r+1)·q + min(r+1, N mod W))`` with q = N // W (the first N mod W processes take
  one extra sample; the same split as ``accelerate``'s ``split_between_processes``). A process whose shard
  is empty (W > N) still takes part in every collective operation, with zero votes and no evidence.
- **Majority votes** (``aggregation="majority"``) are integer sums of signs. Each shard's votes are widened
  to int32, summed over processes, and only then narrowed to ``vote_dtype(N)`` of the *total* N (a shard
  of 64 samples fits int8 though the total of 130 needs int16). Integer sums are exact: the votes are
  bitwise those of one process computing the same per-sample gradient signs.
- **Mean votes** (``aggregation="mean"``) need the float sum Σ_n g_n before the sign. Each shard's sum
  (accumulated in fp32 in sample order by the reference engine) is widened to float64 and summed over
  processes. Float addition is not associative, so mean votes are exact only up to summation order: a
  coordinate whose summed gradient is within float32 rounding of zero (roughly
  |Σ_n g_n| ≤ N·2⁻²⁴·Σ_n |g_n|) can get another sign, or 0 instead of ±1, than one process gives;
  elsewhere the votes are those of one process. (On the tests' tiny models no coordinate is that close,
  and the mean votes of 1 and 3 processes are bitwise equal; that is an observation, not a guarantee.)
- **Evidence** (a coordinate touched by some sample's nonzero gradient) is a logical OR over processes.
  A tensor missing from a shard's partial evidence means "every coordinate has evidence" on that shard,
  hence in the result; only tensors partial on every process are reduced (as uint8, MAX).
- **Errors** on one process (a NaN loss in its shard, a loss that is not a scalar, ...) are shared before
  any reduction: every process raises, the one that failed with its own error, the others with a
  ``GradFixError`` naming it, so no process waits forever in a collective.

Device: with several processes each one computes on ``PartialState().device`` (its GPU under a multi-GPU
launch, the CPU otherwise). A single process without a launcher computes on the CPU as before: no process
group is created and nothing here needs CUDA. Per-sample gradient signs are computed in floating point, so
two runs on different hardware (CPU vs GPU, or other BLAS kernels) may disagree on coordinates whose
gradient is rounding noise; "bitwise identical" above is for the same kind of device.

Launch: ``accelerate launch --multi_gpu --num_processes 2 -m gradfix_hf votes RECIPE -o FILE`` (on a
machine without GPUs this runs two CPU processes over gloo; ``accelerate launch --cpu`` with several
processes needs MPI), or ``torchrun --nproc_per_node 2 -m gradfix_hf votes ...``.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch

from ..errors import GradFixError
from ..runtime import ProcessContext, process_context, shard_indices
from ..runtime.mesh import VoteMesh
from ..storage import vote_dtype
from .batched_engine import Sharding, compute_votes_batched
from .fold import AGGREGATIONS
from .reference_engine import compute_votes

#: A per-process vote engine: ``engine(examples, aggregation, progress) -> (votes, partial_evidence)``.
#: ``examples`` is this process's shard (never empty). ``aggregation`` is "majority" (integer votes), "mean"
#: (sign votes; only used by a single process) or "sum" (float Σ_n g_n per parameter, for "mean" over
#: several processes). ``partial_evidence`` holds a bool mask only for tensors where some coordinate got no
#: gradient. Build one with :func:`reference_vote_engine`; a faster engine only needs the same signature.
VoteEngine = Callable[[Sequence[Any], str, bool], tuple[dict, dict]]


def reference_vote_engine(model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
                          parameter_names: Sequence[str], *, device: Optional[torch.device] = None,
                          description: str = "votes") -> VoteEngine:
    """The exact one-sample-at-a-time engine (:func:`compute_votes`) as a :data:`VoteEngine`.

    With ``device``, the model is moved there and each example's tensors are sent there before its loss.
    """
    loss = loss_fn
    if device is not None:
        from accelerate.utils import send_to_device

        model = model.to(device)

        def loss(m, example):  # the same loss, with the example on the model's device
            return loss_fn(m, send_to_device(example, device))

    def engine(examples: Sequence[Any], aggregation: str, progress: bool) -> tuple[dict, dict]:
        return compute_votes(model, loss, examples, parameter_names, aggregation=aggregation,
                             progress=progress, description=description)

    return engine


def batched_vote_engine(model: torch.nn.Module, objective: Any, parameter_names: Sequence[str], *,
                        micro_batch_size: int = 16, device: Optional[torch.device] = None,
                        description: str = "votes") -> VoteEngine:
    """The batched engine (:func:`~gradfix_hf.votes.batched_engine.compute_votes_batched`) as a
    :data:`VoteEngine`. With ``device`` the model is moved there; the engine sends each batch to it."""
    if device is not None:
        model = model.to(device)

    def engine(examples: Sequence[Any], aggregation: str, progress: bool) -> tuple[dict, dict]:
        return compute_votes_batched(model, objective, examples, parameter_names, aggregation=aggregation,
                                     micro_batch_size=micro_batch_size, progress=progress, description=description)

    return engine


def reduce_votes(votes: dict[str, torch.Tensor], evidence: dict[str, torch.Tensor], *, n_samples: int,
                 aggregation: str = "majority", context: Optional[ProcessContext] = None,
                 names: Optional[Sequence[str]] = None) -> tuple[dict, dict]:
    """Combine every process's shard result into the votes of all ``n_samples`` samples.

    ``votes`` are this shard's integer votes ("majority") or float gradient sums Σ g ("mean");
    ``evidence`` its partial evidence masks (a tensor absent means full evidence on this shard). Returns
    ``(votes in vote_dtype(n_samples), evidence only for tensors partial on every process)``, the same on
    every process. ``names`` fixes the order of the collectives (default: sorted names), which must be the
    same on every process.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    context = context or ProcessContext()
    names = list(names) if names is not None else sorted(votes)
    dtype = vote_dtype(n_samples)
    reduced = {}
    for name in names:
        if aggregation == "majority":
            if votes[name].is_floating_point():
                raise TypeError(f"majority votes must be integers; {name!r} is {votes[name].dtype}")
            total = context.all_reduce(votes[name].to(torch.int32), "sum")
            reduced[name] = total.to(dtype)
        else:
            total = context.all_reduce(votes[name].to(torch.float64), "sum")
            reduced[name] = torch.sign(-total).to(dtype)
    partial_here = torch.tensor([int(name in evidence and not bool(evidence[name].all())) for name in names],
                                dtype=torch.int32)
    # a tensor has full evidence in the result if it has it on any process: reduce the "full" flags
    full_anywhere = context.all_reduce(1 - partial_here, "max")
    merged = {}
    for name, full in zip(names, full_anywhere.tolist()):
        if full:
            continue
        ev = context.all_reduce(evidence[name].to(torch.uint8), "max").bool()
        if not bool(ev.all()):
            merged[name] = ev
    return reduced, merged


def _empty_shard(shapes: dict[str, Sequence[int]], aggregation: str) -> tuple[dict, dict]:
    dtype = torch.int32 if aggregation == "majority" else torch.float64
    votes = {name: torch.zeros(tuple(shape), dtype=dtype) for name, shape in shapes.items()}
    evidence = {name: torch.zeros(tuple(shape), dtype=torch.bool) for name, shape in shapes.items()}
    return votes, evidence


def _share_errors(context: ProcessContext, error: Optional[BaseException]) -> None:
    """Raise on every process if the engine failed on any (a failed process re-raises its own error)."""
    messages = context.all_gather_object(None if error is None else f"{type(error).__name__}: {error}")
    failed = [(rank, msg) for rank, msg in enumerate(messages) if msg is not None]
    if not failed:
        return
    if error is not None:
        raise error
    rank, msg = failed[0]
    raise GradFixError(f"votes failed on process {rank} of {context.world}: {msg}")


def shard_in_blocks(n: int, rank: int, world: int, block: int = 1) -> range:
    """Like :func:`shard_indices`, but over whole blocks of ``block`` samples (the last may be shorter).

    The batched engine pads each micro-batch to its longest sample, so a gradient that is rounding noise
    depends on which samples share its micro-batch. Sharding whole micro-batches keeps every micro-batch the
    same whatever the number of processes, which is what makes the votes bitwise identical.
    """
    blocks = shard_indices(-(-n // block) if n else 0, rank, world)
    return range(min(n, blocks.start * block), min(n, blocks.stop * block))


def distributed_votes(engine: VoteEngine, examples: Sequence[Any], shapes: dict[str, Sequence[int]], *,
                      aggregation: str = "majority", progress: bool = True,
                      context: Optional[ProcessContext] = None, block: int = 1) -> tuple[dict, dict]:
    """Votes of all ``examples`` with this process computing its shard through ``engine``.

    ``block``: shards are made of whole blocks of that many consecutive samples (the batched engine's
    micro-batch size; 1 for the one-sample engine), see :func:`shard_in_blocks`.

    ``shapes`` maps every voted parameter to its shape (for an empty shard, and the order of collectives).
    With one process this is just ``engine(examples, aggregation, progress)``. With several, the result
    (the same on every process) follows the module docstring: majority votes bitwise those of one process,
    mean votes exact up to float summation order. Progress bars are shown by the main process only.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    context = context or process_context()
    if not context.distributed:
        return engine(examples, aggregation, progress)
    shard = shard_in_blocks(len(examples), context.rank, context.world, block)
    error: Optional[BaseException] = None
    votes = evidence = None
    try:
        if len(shard):
            mode = "majority" if aggregation == "majority" else "sum"
            votes, evidence = engine([examples[i] for i in shard], mode, progress and context.is_main)
        else:
            votes, evidence = _empty_shard(shapes, aggregation)
        missing = sorted(set(shapes) - set(votes))
        if missing:
            raise GradFixError(f"internal: the vote engine returned no votes for {missing[:3]}")
    except Exception as exc:  # shared below so no process is left waiting in a collective
        if isinstance(exc, GradFixError) and len(shard):
            exc = type(exc)(f"process {context.rank} of {context.world}, samples {shard.start}–{shard.stop - 1} "
                            f"of {len(examples)} ('sample i' below is sample {shard.start}+i): {exc}")
        error = exc
    _share_errors(context, error)
    return reduce_votes(votes, evidence, n_samples=len(examples), aggregation=aggregation, context=context,
                        names=list(shapes))

def fsdp_votes(model: torch.nn.Module, objective: Any, examples: Sequence[Any], parameter_names: Sequence[str], *,
               mesh: VoteMesh, aggregation: str = "majority", micro_batch_size: int = 16,
               progress: bool = True) -> tuple[dict, dict]:
    """This process's rows of the votes of all ``examples``, with ``model`` sharded by FSDP2 over ``mesh``.

    Every process takes whole micro-batches of the samples (as :func:`distributed_votes`, so each micro-batch is
    padded alike whatever the number of processes) and the counts are summed over every process
    (:mod:`.sharded_fold`): majority votes are bitwise those of one process, mean votes exact up to float
    summation order. Returns ``(votes, partial evidence)`` of this process's shard of rows of every tensor.
    """
    n, world = len(examples), mesh.world
    shard = shard_in_blocks(n, mesh.rank, world, micro_batch_size)
    steps = -(-len(shard_in_blocks(n, 0, world, micro_batch_size)) // micro_batch_size)  # process 0 has the most
    sharding = Sharding(mesh=mesh, n_samples=n, steps=steps, padding=list(examples[:micro_batch_size]),
                        first=shard.start)  # errors name samples by their index among all of them
    return compute_votes_batched(model, objective, [examples[i] for i in shard], parameter_names,
                                 aggregation=aggregation, micro_batch_size=micro_batch_size,
                                 progress=progress and mesh.rank == 0, sharded=sharding)
