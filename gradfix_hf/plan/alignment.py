"""Alignment before the mask (``align: weight-matching``): θ_A and θ_A^ft are permuted into θ_B's basis, so that
τ_A is taken in θ_B's coordinates before the vote and the merge.

Why: a new release trained from scratch computes with the same architecture but its hidden units and heads in
another order; adding τ_A coordinate by coordinate then adds it to the wrong units, whatever the mask. Weight
matching (Git Re-Basin, Ainsworth et al. 2023) finds, per layer and per group of :mod:`.permutations` (the
feed-forward units, the heads), the permutation of θ_A's units that best matches θ_B's: a linear assignment
(scipy's ``linear_sum_assignment``) maximising the summed inner products of the units' weights. The residual
stream is shared, so the groups are independent and one pass is exact on a permuted copy. The permutation is
applied as θ_A's and θ_A^ft's tensors are read (:class:`PermutedReader`): nothing is copied beyond one layer's
weights while the assignment is computed, and the merge streams as before.
"""
from __future__ import annotations

from typing import Iterator

import torch

from ..errors import CompatibilityError, GradFixError
from .permutations import PermutationGroup, layer_groups


def _unit_count(group: PermutationGroup, config, first_length: int, sections: int) -> int:
    if group.units is None:
        return first_length // sections
    units = getattr(config, group.units, None)
    if group.units == "num_key_value_heads" and units is None:
        units = getattr(config, "num_attention_heads", None)  # no grouped-query attention: one per head
    if not isinstance(units, int) or units < 1:
        raise CompatibilityError(f"align: the config has no {group.units} to count the units of {group.name}.")
    return units


def block_index(length: int, sections: int, units: int, order: torch.Tensor) -> torch.Tensor:
    """Indices along an axis of ``length`` = sections × units × block that put unit ``order[j]`` at unit ``j``
    of every section."""
    if length % (sections * units):
        raise CompatibilityError(f"align: an axis of {length} does not split into {sections} × {units} units.")
    block = length // (sections * units)
    within = torch.arange(block)
    per_section = (order[:, None] * block + within[None, :]).reshape(-1)
    return torch.cat([s * units * block + per_section for s in range(sections)])


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


def weight_matching(names: list[str], model_type: str, config, source, target, source_keys: dict,
                    target_keys: dict) -> tuple[dict[str, list[tuple[int, torch.Tensor]]], dict]:
    """The permutation of θ_A's units onto θ_B's of every group, as ``{source key: [(axis, index), ...]}`` to
    apply when reading θ_A (and θ_A^ft), and each group's match quality: units, how many moved, and the mean cosine
    of the matched units' weights before (identity) and after."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:  # an extra: pip install 'gradfix_hf[align]'
        raise GradFixError("align: weight-matching needs scipy: pip install 'gradfix_hf[align]'.") from None
    permutations: dict[str, list[tuple[int, torch.Tensor]]] = {}
    quality: dict[str, dict] = {}
    for prefix, group, entries in layer_groups(names, model_type):
        theirs = [target.get_float(target_keys[name]) for name, _, _ in entries]
        ours = [source.get_float(source_keys[name]) for name, _, _ in entries]
        for mine, other, (name, axis, _) in zip(ours, theirs, entries):
            if mine.shape != other.shape:
                raise CompatibilityError(f"align: tensor {name!r} has shape {list(mine.shape)} in θ_A but "
                                         f"{list(other.shape)} in θ_B.")
        units = _unit_count(group, config, theirs[0].shape[entries[0][1]], entries[0][2])
        features_b, features_a = _features(theirs, entries, units), _features(ours, entries, units)
        rows, cols = linear_sum_assignment((features_b @ features_a.T).numpy(), maximize=True)
        order = torch.as_tensor(cols[rows.argsort()], dtype=torch.int64)  # θ_A's unit placed at each θ_B unit
        for tensor, (name, axis, sections) in zip(theirs, entries):
            permutations.setdefault(source_keys[name], []).append(
                (axis, block_index(tensor.shape[axis], sections, units, order)))
        quality[prefix + group.name] = {
            "units": units, "moved": int((order != torch.arange(units)).sum()),
            "cosine_before": round(_mean_cosine(features_a, features_b), 6),
            "cosine_after": round(_mean_cosine(features_a[order], features_b), 6)}
        del theirs, ours, features_a, features_b
    return permutations, quality


class PermutedReader:
    """A checkpoint reader whose tensors read permuted along the axes weight matching chose (others as stored)."""

    def __init__(self, reader, permutations: dict[str, list[tuple[int, torch.Tensor]]]):
        self.reader, self.permutations = reader, permutations
        self.role = getattr(reader, "role", None)
        self.model = getattr(reader, "model", None)

    def _permuted(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        for axis, index in self.permutations.get(key, ()):
            tensor = tensor.index_select(axis, index)
        return tensor

    def keys(self) -> list[str]:
        return self.reader.keys()

    def __contains__(self, key: str) -> bool:
        return key in self.reader

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.reader.shape(key))

    def dtype(self, key: str) -> torch.dtype:
        return self.reader.dtype(key)

    def get(self, key: str) -> torch.Tensor:
        return self._permuted(key, self.reader.get(key))

    def get_checked(self, key: str) -> torch.Tensor:
        return self._permuted(key, self.reader.get_checked(key))

    def get_float(self, key: str) -> torch.Tensor:
        return self._permuted(key, self.reader.get_float(key))

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for key in self.keys():
            yield key, self.get(key)


def summary(quality: dict) -> dict:
    """The report's ``alignment``: totals, and every group's match quality."""
    moved = sum(q["moved"] for q in quality.values())
    return {"method": "weight-matching", "groups": len(quality), "moved_units": moved,
            "units": sum(q["units"] for q in quality.values()), "per_group": quality}
