"""θ_B as the task model, sharded with PyTorch FSDP2 (``fully_shard``): each process reads and keeps its rows only.

Why: a vote of a model larger than one device. The model is built without weights (parameters on the meta
device; buffers such as RoPE's ``inv_freq`` computed as usual), each of its blocks (the classes a Hugging Face
model names in ``_no_split_modules``, as Accelerate's transformer auto-wrap does) and then the whole model are
given to ``fully_shard``, and every parameter's local shard is filled from θ_B's checkpoint one tensor at a time:
no process ever holds all of θ_B. The values are bitwise those :func:`~gradfix_hf.plan.base_model.load_base_model`
loads, so the vote's forward and backward see the same numbers.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..errors import RecipeError
from ..runtime.mesh import VoteMesh
from ..storage import shard_rows
from .roles import SOURCE_FT, TARGET
from .transport_plan import TransportPlan


def block_classes(model: torch.nn.Module) -> set[str]:
    """The class names of the model's blocks, each of which becomes one FSDP2 unit (all-gathered as a whole)."""
    return set(getattr(model, "_no_split_modules", None) or [])


def units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules given to ``fully_shard`` before the whole model: its blocks, and its input and output embeddings
    when they are not tied. The root's own weights stay gathered from its forward to the end of its backward, so
    a large vocabulary's embedding and LM head (0.4 GB on a 1.2 B Llama in bf16) are their own units instead."""
    blocks = block_classes(model)
    out = [module for module in list(model.modules())[1:] if type(module).__name__ in blocks]
    try:
        embeddings = [model.get_input_embeddings(), model.get_output_embeddings()]
    except (NotImplementedError, AttributeError):  # e.g. CLIP: two towers, no one input embedding
        return out
    weights = [getattr(e, "weight", None) for e in embeddings]
    if all(e is not None for e in embeddings) and weights[0] is not weights[1]:
        inside = {id(p) for unit in out for p in unit.parameters()}
        out += [e for e in embeddings if id(e.weight) not in inside]
    return out


def load_sharded_base_model(plan: TransportPlan, mesh: VoteMesh, dtype: torch.dtype = torch.float32, *,
                            prepare: Optional[Callable[[torch.nn.Module], object]] = None) -> torch.nn.Module:
    """θ_B in ``dtype``, sharded over ``mesh`` (collective: every process of the mesh calls it). ``prepare`` is
    applied to the model before ``fully_shard`` (activation checkpointing composes with it in that order)."""
    scalars = [name for name, shape in plan.layout.parameters.items() if not shape]
    if scalars:  # before any weight is read
        raise RecipeError(f"vote_sharding: fsdp shards each tensor by rows, and FSDP2 cannot shard the scalar "
                          f"parameter {scalars[0]!r} of {plan.layout.config.architectures[0]}: vote with "
                          "vote_sharding: samples.")
    from accelerate import init_empty_weights
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard

    with init_empty_weights(include_buffers=False):  # parameters on meta; buffers computed at init, for real
        model = plan.layout.model_class.from_config(plan.layout.config, dtype=dtype)
    if dtype == torch.float32:
        model.float()
    model.tie_weights()
    if prepare is not None:
        prepare(model)
    for module in units(model):
        fully_shard(module, mesh=mesh.device_mesh)
    fully_shard(model, mesh=mesh.device_mesh)
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    model.to_empty(device=mesh.device)  # this process's shards, uninitialised, and the buffers' storage
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            value = plan.raw_tensor(TARGET, name) if name in plan.layout.buffers else buffers[name]
            buffer.copy_(value)
        for name, param in model.named_parameters():
            role = SOURCE_FT if name in plan.copied_from_finetune else TARGET
            stored = plan.raw_tensor(role, name)  # a memory map: only the rows read below are touched
            rows = shard_rows(stored.shape[0], mesh.shard_size, mesh.shard_index)
            local = param.to_local()
            if param.placements[-1] != Shard(0) or tuple(local.shape) != (len(rows), *stored.shape[1:]):
                raise RuntimeError(f"internal: FSDP2 placed {name!r} as {param.placements} {list(local.shape)}, "
                                   f"not rows {rows.start}–{rows.stop} of {list(stored.shape)}")
            local.copy_(stored[rows.start:rows.stop].to(device=mesh.device, dtype=dtype))
            del stored
    return model.eval()
