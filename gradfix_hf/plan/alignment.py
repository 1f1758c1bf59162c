"""Alignment before the mask (``align: weight-matching``): θ_A and θ_A^ft are permuted into θ_B's basis, so that
τ_A is taken in θ_B's coordinates before the vote and the merge.

Why: a new release trained from scratch computes with the same architecture but its hidden units and heads in
another order; adding τ_A coordinate by coordinate then adds it to the wrong units, whatever the mask. Weight
matching (Git Re-Basin, Ainsworth et al. 2023) finds the permutation of θ_A's units that best matches θ_B's: a
linear assignment (scipy's ``linear_sum_assignment``) maximising the summed inner products of the units' weights.
First the residual stream, matched on the tensors that touch no other permuted axis (embeddings, norms, output
biases); then, with it applied, every layer's groups of :mod:`.permutations` (the feed-forward units, the heads),
which are then independent of each other: one pass is exact on a permuted copy. The permutation is applied as
θ_A's and θ_A^ft's tensors are read (:class:`PermutedReader`): nothing is copied beyond one layer's weights (and
the embeddings) while the assignment is computed, and the merge streams as before.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import CompatibilityError, GradFixError
from .permutations import block_index, layer_groups, residual_tensors, unit_count
from .reader_view import ReaderView


def _features(tensors: list[torch.Tensor], entries, units: int) -> torch.Tensor:
    """One row per unit: the unit's slices of every tensor of the group, flattened and concatenated."""
    rows = []
    for tensor, (_, axis, sections) in zip(tensors, entries):
        moved = tensor.float().movedim(axis, 0)
        shape = (sections, units, moved.shape[0] // (sections * units), *moved.shape[1:])
        rows.append(moved.reshape(shape).transpose(0, 1).reshape(units, -1))
    return torch.cat(rows, dim=1)


def _mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12).mean())


def _assign(linear_sum_assignment, features_b: torch.Tensor, features_a: torch.Tensor) -> torch.Tensor:
    """θ_A's unit placed at each θ_B unit: the assignment maximising the summed inner products."""
    rows, cols = linear_sum_assignment((features_b @ features_a.T).numpy(), maximize=True)
    return torch.as_tensor(cols[rows.argsort()], dtype=torch.int64)


def _quality(order: torch.Tensor, features_a: torch.Tensor, features_b: torch.Tensor) -> dict:
    return {"units": len(order), "moved": int((order != torch.arange(len(order))).sum()),
            "cosine_before": round(_mean_cosine(features_a, features_b), 6),
            "cosine_after": round(_mean_cosine(features_a[order], features_b), 6)}


def _residual_order(assign, names: list[str], grouped: set, residual: list[tuple[str, int]], read) -> tuple:
    """The residual stream's permutation, matched on the tensors that touch it and no permuted unit (embeddings,
    norms, output biases): ``(order, features_a, features_b)``, or None when the architecture lists none."""
    free = [(name, axis) for name, axis in residual if name not in grouped]
    if not free:
        return None
    features = {}
    for side in ("a", "b"):
        parts = []
        for name, axis in free:
            tensor = read(side, name)
            parts.append(tensor.movedim(axis, 0).reshape(tensor.shape[axis], -1))
        features[side] = torch.cat(parts, dim=1)
    return assign(features["b"], features["a"]), features["a"], features["b"]


def weight_matching(names: list[str], model_type: str, config, source, target, source_keys: dict,
                    target_keys: dict) -> tuple[dict[str, list[tuple[int, torch.Tensor]]], dict]:
    """The permutation of θ_A's units onto θ_B's — the residual stream's first (matched on the embeddings, norms
    and output biases), then every layer's groups with it applied — as ``{source key: [(axis, index), ...]}`` to
    apply when reading θ_A (and θ_A^ft), and each one's match quality: units, how many moved, and the mean cosine
    of the matched units' weights before (identity) and after."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:  # an extra: pip install 'gradfix_hf[align]'
        raise GradFixError("align: weight-matching needs scipy: pip install 'gradfix_hf[align]'.") from None

    def assign(features_b: torch.Tensor, features_a: torch.Tensor) -> torch.Tensor:
        return _assign(linear_sum_assignment, features_b, features_a)

    groups = layer_groups(names, model_type)
    residual = [(n, a) for n, a in residual_tensors(names, model_type) if n in source_keys and n in target_keys]
    axis_of = dict(residual)
    permutations: dict[str, list[tuple[int, torch.Tensor]]] = {}
    quality: dict[str, dict] = {}
    stream: Optional[torch.Tensor] = None

    def read(side: str, name: str) -> torch.Tensor:
        """θ_B's tensor, or θ_A's with the residual stream already in θ_B's order."""
        if side == "b":
            return target.get_float(target_keys[name])
        tensor = source.get_float(source_keys[name])
        if tensor.shape != target.shape(target_keys[name]):
            raise CompatibilityError(f"align: tensor {name!r} has shape {list(tensor.shape)} in θ_A but "
                                     f"{list(target.shape(target_keys[name]))} in θ_B.")
        return tensor if stream is None or name not in axis_of else tensor.index_select(axis_of[name], stream)

    found = _residual_order(assign, names, {n for _, _, entries in groups for n, _, _ in entries}, residual, read)
    if found is not None:
        stream, features_a, features_b = found
        quality["residual"] = _quality(stream, features_a, features_b)
        for name, axis in residual:
            permutations.setdefault(source_keys[name], []).append((axis, stream))
    for prefix, group, entries in groups:
        theirs = [read("b", name) for name, _, _ in entries]
        ours = [read("a", name) for name, _, _ in entries]
        units = unit_count(group, config, theirs[0].shape[entries[0][1]], entries[0][2])
        features_b, features_a = _features(theirs, entries, units), _features(ours, entries, units)
        order = assign(features_b, features_a)
        for tensor, (name, axis, sections) in zip(theirs, entries):
            permutations.setdefault(source_keys[name], []).append(
                (axis, block_index(tensor.shape[axis], sections, units, order)))
        quality[prefix + group.name] = _quality(order, features_a, features_b)
        del theirs, ours, features_a, features_b
    return permutations, quality


class PermutedReader(ReaderView):
    """A checkpoint reader whose tensors read permuted along the axes weight matching chose (others as stored)."""

    def __init__(self, reader, permutations: dict[str, list[tuple[int, torch.Tensor]]]):
        super().__init__(reader)
        self.permutations = permutations

    def transform(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        for axis, index in self.permutations.get(key, ()):
            tensor = tensor.index_select(axis, index)
        return tensor


def summary(quality: dict) -> dict:
    """The report's ``alignment``: totals, and the match quality of the residual stream and of every group."""
    moved = sum(q["moved"] for q in quality.values())
    return {"method": "weight-matching", "groups": len(quality), "moved_units": moved,
            "units": sum(q["units"] for q in quality.values()), "per_group": quality}
