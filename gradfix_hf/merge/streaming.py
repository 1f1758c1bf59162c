"""The streaming merge: one output tensor at a time from memory-mapped inputs.

``output_tensor`` is the single definition of what each output tensor is; ``merge_to_folder`` streams it
into sharded safetensors (peak memory ≈ a few tensors), and ``apply_in_memory`` writes the same tensors
into a loaded model (used for held-out scores of several methods without writing folders).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import torch
from tqdm.auto import tqdm

from ..compatibility import SOURCE, SOURCE_FT, TARGET, TARGET_FT, TransportPlan
from ..votes.votes_file import VotesFile
from .masks import keep_mask, transported
from .writer import ShardedSafetensorsWriter


@dataclass(frozen=True)
class MaskSpec:
    """Which mask to apply, with what α and no-evidence policy."""

    kind: str = "gradfix"
    alpha: float = 1.0
    no_evidence: str = "drop"


def output_tensor(plan: TransportPlan, name: str, spec: MaskSpec, votes: Optional[VotesFile]) -> tuple[torch.Tensor, Optional[dict]]:
    """The output tensor ``name`` (fp32 for transported ones) and its per-tensor statistics."""
    if name in plan.copied_from_finetune:
        return plan.raw_tensor(SOURCE_FT, name), None
    if name not in plan.transported:
        return plan.raw_tensor(TARGET, name), None
    target = plan.tensor(TARGET, name)
    tau = plan.tensor(SOURCE_FT, name) - plan.tensor(SOURCE, name)
    signs = evidence = None
    if spec.kind == "oracle":
        signs = plan.tensor(TARGET_FT, name) - target
    elif spec.kind in ("gradfix", "mean"):
        signs, evidence = votes.votes[name], votes.has_evidence(name)
    mask = keep_mask(spec.kind, tau, signs=signs, evidence=evidence, no_evidence=spec.no_evidence)
    nonzero = int((tau != 0).sum())
    stats = {"numel": tau.numel(), "kept_fraction": float(mask.sum()) / max(tau.numel(), 1),
             "kept_of_nonzero_tau": float(mask.sum()) / max(nonzero, 1)}
    if votes is not None and spec.kind in ("gradfix", "mean"):
        stats["votes"] = votes.statistics(name)
    return transported(target, tau, mask, spec.alpha), stats


def iter_output(plan: TransportPlan, spec: MaskSpec, votes: Optional[VotesFile], *,
                progress: bool = False) -> Iterator[tuple[str, torch.Tensor, Optional[dict]]]:
    names = list(plan.layout.parameters) + list(plan.layout.buffers)
    for name in tqdm(names, desc="merge", disable=not progress, unit="tensor"):
        tensor, stats = output_tensor(plan, name, spec, votes)
        yield name, tensor, stats


def merge_to_folder(plan: TransportPlan, folder: Union[str, Path], spec: MaskSpec, votes: Optional[VotesFile], *,
                    dtype: Optional[torch.dtype] = None, max_shard_size: Union[int, str] = "5GB",
                    progress: bool = False) -> dict:
    """Stream the output tensors into ``folder``; returns the per-tensor statistics of transported tensors."""
    writer = ShardedSafetensorsWriter(folder, max_shard_size)
    per_tensor = {}
    for name, tensor, stats in iter_output(plan, spec, votes, progress=progress):
        if tensor.is_floating_point():
            stored = plan.readers[TARGET].dtype(plan.keys[TARGET][name]) if name in plan.keys[TARGET] else tensor.dtype
            tensor = tensor.to(dtype or stored)
        writer.add(name, tensor)
        if stats is not None:
            per_tensor[name] = stats
    writer.close()
    return per_tensor


@torch.no_grad()
def apply_in_memory(model: torch.nn.Module, plan: TransportPlan, spec: MaskSpec, votes: Optional[VotesFile]) -> dict:
    """Set the model's transported parameters to the output tensors of ``spec`` (fp32, in place)."""
    params = dict(model.named_parameters())
    per_tensor = {}
    for name in plan.transported:
        tensor, stats = output_tensor(plan, name, spec, votes)
        params[name].copy_(tensor)
        per_tensor[name] = stats
    return per_tensor


def load_base_model(plan: TransportPlan) -> torch.nn.Module:
    """θ_B in fp32 as the task model, with tensors absent from θ_B (a new head) taken from θ_A^ft."""
    model = plan.layout.model_class.from_config(plan.layout.config)
    model.float()
    state = {}
    for name in list(plan.layout.parameters) + list(plan.layout.buffers):
        role = SOURCE_FT if name in plan.copied_from_finetune else TARGET
        state[name] = plan.raw_tensor(role, name)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {alias for aliases in plan.layout.aliases.values() for alias in aliases}
    left = [m for m in missing if m not in tied]
    if left or unexpected:
        raise RuntimeError(f"internal: could not load θ_B into {type(model).__name__}: missing {left[:3]}, "
                           f"unexpected {unexpected[:3]}")
    model.tie_weights()
    return model.eval()
