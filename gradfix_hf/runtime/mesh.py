"""The 2-D layout of a sharded (FSDP2) vote: shard θ_B within a group of processes, replicate across groups.

Why its own module: a sharded vote needs two process groups besides the default one, and every process must
create them in the same order. With W processes and a shard size S (the processes of one node by default, as
PyTorch's hybrid sharding does), process r holds shard ``r mod S`` of every tensor and belongs to replica
``r // S``. The vote sums each tensor's counts within its shard group (a reduce-scatter: each process keeps its
rows) and then across replicas (an all-reduce of the rows): the data-parallel dimension is every process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..errors import RecipeError
from .processes import ProcessContext


@dataclass(frozen=True)
class VoteMesh:
    """Where this process stands in a sharded vote: its shard of θ_B and its replica, with their groups."""

    rank: int
    world: int
    shard_size: int
    device: torch.device
    shard_group: Any = None  # the processes holding the other shards of this replica (None: one process)
    replicate_group: Any = None  # the processes holding this same shard in the other replicas
    device_mesh: Any = None  # the DeviceMesh given to ``fully_shard`` (1-D "shard", or 2-D "replicate", "shard")

    @property
    def shard_index(self) -> int:
        return self.rank % self.shard_size

    @property
    def replicas(self) -> int:
        return self.world // self.shard_size

    @property
    def replica_index(self) -> int:
        return self.rank // self.shard_size

    @property
    def writes_shard(self) -> bool:
        """One process per shard writes it: the one in the first replica."""
        return self.replica_index == 0


def default_shard_size(world: int) -> int:
    """The processes of one node (``LOCAL_WORLD_SIZE``, set by torchrun and ``accelerate launch``), else all."""
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    return int(local) if local.isdigit() and int(local) > 0 else world


def check_shard_size(shard_size: int, world: int) -> None:
    """A shard size must be positive and divide the number of processes (every replica holds every shard)."""
    if shard_size < 1 or world % shard_size:
        raise RecipeError(f"vote_shard_size: {shard_size} does not divide the {world} processes of this launch: "
                          "every replica must hold every shard (e.g. the processes of one node, which is the "
                          "default).")


def vote_mesh(context: ProcessContext, shard_size: Optional[int] = None) -> VoteMesh:
    """The mesh of a sharded vote over the launch's processes (collective: every process must call it)."""
    shard_size = default_shard_size(context.world) if shard_size is None else shard_size
    check_shard_size(shard_size, context.world)
    if not context.distributed:
        return VoteMesh(rank=0, world=1, shard_size=1, device=context.device)
    from torch.distributed.device_mesh import init_device_mesh

    replicas = context.world // shard_size
    device_type = context.device.type
    if replicas == 1:
        device_mesh = init_device_mesh(device_type, (shard_size,), mesh_dim_names=("shard",))
    else:
        device_mesh = init_device_mesh(device_type, (replicas, shard_size), mesh_dim_names=("replicate", "shard"))
    # the vote's own groups, apart from the ones FSDP2 all-gathers on (every process creates every group, in order)
    shard_group = replicate_group = None
    for replica in range(replicas):
        group = torch.distributed.new_group(list(range(replica * shard_size, (replica + 1) * shard_size)))
        if replica == context.rank // shard_size:
            shard_group = group
    for shard in range(shard_size):
        group = torch.distributed.new_group(list(range(shard, context.world, shard_size)))
        if shard == context.rank % shard_size:
            replicate_group = group
    return VoteMesh(rank=context.rank, world=context.world, shard_size=shard_size, device=context.device,
                    shard_group=shard_group, replicate_group=replicate_group, device_mesh=device_mesh)
