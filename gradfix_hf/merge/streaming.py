"""The streaming merge (stage 2): one output tensor at a time from memory-mapped inputs.

A :class:`MergeJob` holds what a merge reads (one transport plan per task vector; the first gives the output
layout and any new head), the votes, the method and α. ``output_tensor`` is the single definition of what
each output tensor is; ``merge_to_folder`` streams it into sharded safetensors (peak memory ≈ the inputs of
one tensor name plus the shard being filled), and ``apply_in_memory`` writes the same tensors into a loaded
model (held-out scores of several variants without writing folders). Re-running this stage with another α
or mask never touches gradients.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Union

import torch
from tqdm.auto import tqdm

from ..methods import GlobalTrim, MergeMethod, TensorInputs, get
from ..plan import SOURCE, SOURCE_FT, TARGET, TARGET_FT, TransportPlan
from ..storage import ShardedSafetensorsWriter, VotesFile, check_finite
from .drift import drift_norms, sign_agreement, tensor_drift


@dataclass
class MergeJob:
    """Everything stage 2 reads: per task vector its plan, votes and weight; the method, parameters and α; and
    ``refinement``, what a fine-tune of the merge on the vote samples added to each transported tensor
    (``method.few_shot``), so that the output is θ_B + α·delta + refinement."""

    plans: list[TransportPlan]
    votes: list[Optional[VotesFile]]
    method: MergeMethod
    parameters: Mapping[str, Any]
    alpha: float = 1.0
    weights: list[float] = field(default_factory=list)
    thresholds: Optional[list[float]] = None
    refinement: Optional[Mapping[str, torch.Tensor]] = None

    def __post_init__(self) -> None:
        if not self.weights:
            self.weights = [1.0] * len(self.plans)
        if isinstance(self.method, str):
            self.method = get(self.method)
        self.parameters = self.method.validate(self.parameters)

    @classmethod
    def single(cls, plan: TransportPlan, votes: Optional[VotesFile], mask: str = "gradfix", alpha: float = 1.0,
               **parameters: Any) -> "MergeJob":
        """A single-task GradFix job (``mask`` is any mask variant)."""
        return cls([plan], [votes], get("gradfix"), {"mask": mask, **parameters}, alpha)

    @property
    def head(self) -> TransportPlan:
        return self.plans[0]

    def replace(self, **changes: Any) -> "MergeJob":
        if "parameters" in changes:
            changes["parameters"] = {**self.parameters, **changes["parameters"]}
        return dataclasses.replace(self, **changes)


class _Reads:
    """Reads of one tensor name, shared between tasks that use the same checkpoint (e.g. one θ_A)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], torch.Tensor] = {}

    def clear(self) -> None:
        self._cache.clear()

    def get(self, plan: TransportPlan, role: str, name: str) -> torch.Tensor:
        key = (str(plan.readers[role].model.local_dir), plan.keys[role][name])
        if key not in self._cache:
            self._cache[key] = plan.tensor(role, name)
        return self._cache[key]


def tensor_inputs(job: MergeJob, name: str, reads: Optional[_Reads] = None) -> tuple[torch.Tensor, TensorInputs]:
    """θ_B's tensor (fp32) and the kernel inputs of ``name``: τ_t, ŝ_t and evidence of every task."""
    reads = reads or _Reads()
    target = reads.get(job.head, TARGET, name)
    source = job.method.sign_source(job.parameters)
    taus, signs, evidence, n_votes = [], [], [], []
    for plan, votes in zip(job.plans, job.votes):
        n_votes.append(None if votes is None else votes.n_samples)
        taus.append(reads.get(plan, SOURCE_FT, name) - reads.get(plan, SOURCE, name))
        if source == "oracle":
            signs.append(torch.sign(reads.get(plan, TARGET_FT, name) - target))
            evidence.append(None)
        elif source is not None and name not in votes.votes:  # not voted: τ_A ≡ 0 there, so any mask gives 0
            votes.check_not_voted(name, taus[-1])
            signs.append(torch.zeros(taus[-1].shape, dtype=torch.int8))
            evidence.append(torch.zeros(taus[-1].shape, dtype=torch.bool))
        elif source is not None:
            signs.append(votes.votes[name])
            evidence.append(votes.evidence.get(name))
        else:
            signs.append(None)
            evidence.append(None)
    return target, TensorInputs(name, taus, signs, evidence, list(job.weights), job.thresholds, n_votes=n_votes)


def output_tensor(job: MergeJob, name: str) -> tuple[torch.Tensor, Optional[dict]]:
    """The output tensor ``name`` (fp32 for merged ones) and its per-tensor statistics."""
    head = job.head
    if name in head.copied_from_finetune or name not in head.transported:
        role = SOURCE_FT if name in head.copied_from_finetune else TARGET
        return head.raw_tensor(role, name, checked=True), None
    reads = _Reads()
    target, inputs = tensor_inputs(job, name, reads)
    # (every input was checked for NaN/inf as it was read: plan.tensor → CheckpointReader.get_float)
    norms = [drift_norms(target, reads.get(plan, SOURCE, name), tau) for plan, tau in zip(job.plans, inputs.taus)]
    reads.clear()  # θ_A and θ_A^ft are in τ now: their maps go before the kernel's temporaries exist
    shared = [sign_agreement(tau, sign) for tau, sign in zip(inputs.taus, inputs.signs)]
    inputs.agreement = [mask for mask, _ in shared]  # the kernel's sign-agreement masks, computed once
    agreement = [counts for _, counts in shared]
    del shared
    nonzero = _nonzero_of_union(inputs.taus)
    delta = job.method.delta(inputs, job.parameters)
    kept = int(torch.count_nonzero(delta != 0))  # count_nonzero of a float tensor with many zeros is ~3× slower
    stats = {"numel": delta.numel(), "kept_fraction": kept / max(delta.numel(), 1),
             "kept_of_nonzero_tau": kept / max(nonzero, 1)}
    if len(job.votes) == 1 and job.votes[0] is not None and inputs.signs[0] is not None:
        voted = name in job.votes[0].votes
        stats["votes"] = job.votes[0].statistics(name, inputs.signs[0]) if voted else {"not_voted": True}
    stats["drift"] = tensor_drift(norms, agreement)
    fresh = all(delta.data_ptr() != t.data_ptr() for t in [target, *inputs.taus])
    del inputs
    if not fresh:
        delta = delta.clone()
    # θ_B + α·delta written into delta's memory: the same operations (α·delta, then + θ_B; no fused
    # multiply-add, which rounds differently) without another model-sized tensor; α = 1 skips the multiply
    if job.alpha != 1:
        delta.mul_(job.alpha)
    output = delta.add_(target)
    if job.refinement is not None and name in job.refinement:
        output.add_(job.refinement[name])
    check_finite(output, f"output tensor {name!r} (θ_B + α·delta, α = {job.alpha:g})")  # never written, never scored
    return output, stats


def _nonzero_of_union(taus: list[torch.Tensor]) -> int:
    """How many coordinates some task vector changes."""
    if len(taus) == 1:
        return int(torch.count_nonzero(taus[0]))
    union = torch.zeros(taus[0].shape, dtype=torch.bool)
    for tau in taus:
        union |= tau != 0
    return int(torch.count_nonzero(union))


def iter_deltas(job: MergeJob, *, progress: bool = False) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, θ_B tensor, delta) for every merged tensor: what an α sweep keeps to re-score any α in memory."""
    job = compute_thresholds(job, progress=progress)
    for name in tqdm(job.head.transported, desc="deltas", disable=not progress, unit="tensor"):
        target, inputs = tensor_inputs(job, name)
        yield name, target, job.method.delta(inputs, job.parameters)


def compute_thresholds(job: MergeJob, *, progress: bool = False) -> MergeJob:
    """For methods that trim globally (TIES ``original``): the exact per-task thresholds, in two passes."""
    if not job.method.needs_global_threshold(job.parameters):
        return job
    trim = GlobalTrim(len(job.plans), job.parameters["density"])
    for step, add in (("first", trim.first_pass), ("second", trim.second_pass)):
        for name in tqdm(job.head.transported, desc=f"global trim ({step} pass)", disable=not progress, unit="tensor"):
            _, inputs = tensor_inputs(job, name)
            for t, vector in enumerate(job.method.task_vectors(inputs, job.parameters)):
                add(t, vector)
        if step == "first":
            trim.finish_first_pass()
    return job.replace(thresholds=trim.thresholds())


def iter_output(job: MergeJob, *, progress: bool = False,
                largest_first: bool = False) -> Iterator[tuple[str, torch.Tensor, Optional[dict]]]:
    """Every output tensor, in the layout's order or, with ``largest_first``, by decreasing size: the biggest
    temporaries are made while the heap is empty and later, smaller ones fit in the space they leave (in
    layout order a large tensor at the end, e.g. an LM head, finds that space cut up and grows the heap)."""
    shapes = job.head.layout.shapes
    names = list(shapes)
    if largest_first:
        names.sort(key=lambda n: -math.prod(shapes[n]))  # stable: ties keep the layout's order
    for name in tqdm(names, desc="merge", disable=not progress, unit="tensor"):
        tensor, stats = output_tensor(job, name)
        yield name, tensor, stats
        del tensor  # not alive while the next one is computed


def merge_to_folder(job: MergeJob, folder: Union[str, Path], *, dtype: Optional[torch.dtype] = None,
                    max_shard_size: Union[int, str] = "5GB", progress: bool = False) -> dict:
    """Stream the output tensors into ``folder``; returns the per-tensor statistics of merged tensors."""
    job = compute_thresholds(job, progress=progress)
    writer = ShardedSafetensorsWriter(folder, max_shard_size, plan=output_layout(job.head, dtype))
    per_tensor = {}
    # a planned writer puts each tensor in its place whatever the order: the largest go first (peak memory)
    for name, tensor, stats in iter_output(job, progress=progress, largest_first=writer.planned):
        writer.add(name, tensor.to(_output_dtype(job.head, name, tensor.dtype, dtype)))
        del tensor  # written: free it before the next tensor is computed
        if stats is not None:
            per_tensor[name] = stats
    writer.close()
    return {name: per_tensor[name] for name in job.head.layout.shapes if name in per_tensor}


def _output_dtype(head: TransportPlan, name: str, computed: torch.dtype, dtype: Optional[torch.dtype]) -> torch.dtype:
    """A float output tensor is stored as ``dtype``, else as θ_B stores it (a copied head: as computed); others
    keep their own dtype."""
    if not computed.is_floating_point:
        return computed
    return dtype or (head.readers[TARGET].dtype(head.keys[TARGET][name]) if name in head.keys[TARGET] else computed)


def output_layout(head: TransportPlan, dtype: Optional[torch.dtype] = None) -> list[tuple[str, torch.dtype, tuple]]:
    """(name, stored dtype, shape) of every output tensor in write order, known before any is computed."""
    out = []
    for name, shape in head.layout.shapes.items():
        if name in head.transported:
            computed = torch.float32
        else:
            role = SOURCE_FT if name in head.copied_from_finetune else TARGET
            computed = head.readers[role].dtype(head.keys[role][name])
        out.append((name, _output_dtype(head, name, computed, dtype), tuple(shape)))
    return out


@torch.no_grad()
def apply_in_memory(model: torch.nn.Module, job: MergeJob) -> dict:
    """Set the model's merged parameters to the output tensors of ``job`` (fp32, in place)."""
    job = compute_thresholds(job)
    params = dict(model.named_parameters())
    per_tensor = {}
    for name in job.head.transported:
        tensor, stats = output_tensor(job, name)
        params[name].copy_(tensor)
        per_tensor[name] = stats
    return per_tensor
