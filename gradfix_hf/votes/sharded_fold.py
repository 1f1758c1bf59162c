"""The fold of a sharded (FSDP2) vote: each process keeps the counts of its own rows of every voted tensor.

Why: under FSDP2 each process holds 1/S of θ_B, but a per-sample gradient is formed, as in any vote, from the
layer's input and output gradient of one sample, over the whole weight. So each process folds its own samples'
signs into a full-size counter of one tensor for one micro-batch (the same arithmetic as :class:`VoteFold`, in
fact the same code), and as soon as that tensor's micro-batch is folded the counter is reduce-scattered over
the shard group and all-reduced over the replicas (:class:`~gradfix_hf.runtime.mesh.VoteMesh`): the process
keeps only its rows, summed over every process's samples. Counts are integers, so the sum is exact and the
votes are bitwise those of one process. At most one tensor's full counters exist at a time per process.

Every process must flush the same tensors in the same order: the engine flushes a tensor when its gradients
of the micro-batch are folded (the same backward order on every process), then :meth:`end_batch` flushes
the rest in name order; a process with no samples left runs a padding micro-batch whose counts are discarded.
"""
from __future__ import annotations

import torch
from torch import nn

from ..runtime.mesh import VoteMesh
from ..storage.sharded_votes import shard_rows
from .fold import VoteFold


class _PerBatchCounters(dict):
    """name → this micro-batch's full-size counter, created (zeroed) the first time a fold touches it. The
    counter is the first ``rows`` rows of a buffer padded to ``shards × chunk`` rows, which a reduce-scatter
    needs."""

    def __init__(self, fold: "ShardedVoteFold", dtype: torch.dtype):
        super().__init__()
        self.fold, self.dtype, self.padded = fold, dtype, {}

    def __missing__(self, name: str) -> torch.Tensor:
        shape = self.fold.shapes[name]
        chunk = -(-shape[0] // self.fold.mesh.shard_size)
        padded = torch.zeros((chunk * self.fold.mesh.shard_size, *shape[1:]), dtype=self.dtype,
                             device=self.fold.device)
        self.padded[name] = padded
        self[name] = padded[:shape[0]]
        return self[name]

    def take(self, name: str) -> torch.Tensor:
        """The padded buffer of ``name`` (zeros if nothing folded into it), removed from the micro-batch."""
        if name not in self.padded:
            self[name]  # noqa: B018 (creates the zero counter)
        self.pop(name)
        return self.padded.pop(name)


class ShardedVoteFold(VoteFold):
    """A :class:`VoteFold` whose totals are this process's rows of each tensor (see the module docstring)."""

    def __init__(self, params: dict[str, nn.Parameter], n_samples: int, aggregation: str, mesh: VoteMesh):
        self.mesh, self.device = mesh, mesh.device
        super().__init__(params, n_samples, aggregation)
        self.discard = False  # a padding micro-batch: its counts are not added (its collectives still run)
        self.flushed: set[str] = set()

    def allocate(self, params: dict[str, nn.Parameter]) -> None:
        """Per-micro-batch full-size counters (created when first folded into), and this process's rows of the
        totals."""
        self.shapes = {n: tuple(p.shape) for n, p in params.items()}
        scalars = [n for n, shape in self.shapes.items() if not shape]
        if scalars:
            raise ValueError(f"a sharded vote splits tensors by rows; {scalars[0]!r} is a scalar")
        if self.mean:
            self.sums, self.evidence = _PerBatchCounters(self, torch.float32), _PerBatchCounters(self, torch.bool)
            kinds = (torch.float32, torch.int32)
        else:  # a step's counts summed over every process never exceed N: vote_dtype(N) holds them, and the totals
            self.sign_sums, self.voters = _PerBatchCounters(self, self.dtype), _PerBatchCounters(self, self.dtype)
            kinds = (self.dtype, self.dtype)
        shards, index = self.mesh.shard_size, self.mesh.shard_index
        self.totals = {n: tuple(torch.zeros((len(shard_rows(s[0], shards, index)), *s[1:]), dtype=k,
                                            device=self.device) for k in kinds) for n, s in self.shapes.items()}

    def _counters(self) -> tuple[_PerBatchCounters, _PerBatchCounters]:
        return (self.sums, self.evidence) if self.mean else (self.sign_sums, self.voters)

    def dense_columns(self, name, flat, limit, start=0) -> None:
        if not self.discard:
            super().dense_columns(name, flat, limit, start)

    def rows(self, name, row_ids, per_sample_rows, samples) -> None:  # noqa: D102 (VoteFold.rows)
        if not self.discard:
            super().rows(name, row_ids, per_sample_rows, samples)

    def flush(self, name: str) -> None:
        """Sum this micro-batch's counts of ``name`` over every process; keep this process's rows."""
        if name in self.flushed:
            return
        self.flushed.add(name)
        for counters, total in zip(self._counters(), self.totals[name]):
            full = counters.take(name)
            full = torch.zeros_like(full, dtype=total.dtype) if self.discard else full.to(total.dtype)
            mine = full.new_empty((full.shape[0] // self.mesh.shard_size, *full.shape[1:]))
            if self.mesh.shard_group is not None:
                torch.distributed.reduce_scatter_single(mine, full.contiguous(), group=self.mesh.shard_group)
            else:
                mine.copy_(full)
            if self.mesh.replicas > 1:
                torch.distributed.all_reduce(mine, group=self.mesh.replicate_group)
            total.add_(mine[:total.shape[0]])

    def shared_failure(self, message):  # noqa: D102 (VoteFold.shared_failure)
        if self.mesh.world == 1:
            return message
        failed = torch.tensor([0 if message is None else 1], dtype=torch.int32, device=self.device)
        torch.distributed.all_reduce(failed)
        if not int(failed):
            return None
        messages = [None] * self.mesh.world
        torch.distributed.all_gather_object(messages, message)
        rank, first = next((r, m) for r, m in enumerate(messages) if m is not None)
        return f"process {rank} of {self.mesh.world}: {first}"

    def end_batch(self) -> None:
        """Flush every tensor not flushed during this micro-batch (name order: the same on every process)."""
        for name in sorted(self.shapes):
            self.flush(name)
        self.flushed.clear()

    def result(self) -> tuple[dict, dict]:
        """(this process's rows of the votes, their evidence where some coordinate got no vote)."""
        votes, evidence = {}, {}
        for name in list(self.totals):
            first, second = self.totals.pop(name)
            if self.mean:
                votes[name] = first if self.aggregation == "sum" else torch.sign(-first).to(self.dtype)
            else:
                votes[name] = first.neg_().to(self.dtype)
            evidence[name] = second.ne(0)
            votes[name], evidence[name] = votes[name].cpu(), evidence[name].cpu()
        return votes, {n: ev for n, ev in evidence.items() if not bool(ev.all())}
