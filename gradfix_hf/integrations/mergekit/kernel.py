"""The kernel: one output tensor of a mergekit merge, computed by gradfix_hf's per-tensor kernel on the task
vectors τ_t = θ_t^ft − θ_A,t and the votes of that tensor, the code ``gradfix run`` uses, so both front ends
write the same tensors. Independent of mergekit's classes: called with plain tensors, names and parameters.
"""
from __future__ import annotations

import difflib
import functools
import logging
from typing import Any, Mapping, Optional, Sequence

import torch

from ...errors import CompatibilityError, RecipeError, VotesFileError
from ...methods import MergeMethod, TensorInputs
from ...methods import registered_methods as gradfix_registry
from .inputs import (Source, WeightNames, check_votes, load_votes, not_voted_key, open_source, same_file, vote_key,
                     votes_aggregation)
from .library import LOCK
from .parameters import check_alpha, mergekit_name, validate_parameters

logger = logging.getLogger("gradfix_hf")


@functools.lru_cache(maxsize=64)
def _validated(method_name: str, items: tuple, where: str) -> dict:
    return validate_parameters(gradfix_registry()[method_name], dict(items), where)


def merge_tensor(method: MergeMethod, name: str, base: torch.Tensor, finetuned: Sequence[torch.Tensor],
                 sources: Sequence[str], votes: Sequence[Optional[str]], weights: Sequence[float],
                 parameters: Mapping[str, Any], *, alpha: float = 1.0, force: bool = False,
                 names: Optional[WeightNames] = None, where: Optional[str] = None) -> torch.Tensor:
    """One output tensor: θ_B + α·delta, delta from gradfix_hf's kernel on τ_t = θ_t^ft − θ_A,t (fp32, CPU),
    cast back to the base tensor's dtype and device. ``parameters`` are the method's own (None = not given)."""
    where = where or f"merge_method {mergekit_name(method.name)!r} parameters"
    names = names or WeightNames()
    given = tuple(sorted((k, v) for k, v in parameters.items() if v is not None))
    check_alpha(alpha, force, where)
    with LOCK:
        params = dict(_validated(method.name, given, where))
        readers = [open_source(s) for s in sources]
        keys = [r.key(name, names) for r in readers]
    if all(k is None for k in keys):
        return _new_tensor(method, name, finetuned, readers, votes, params, names)
    if any(k is None for k in keys):
        lacking = sources[keys.index(None)]
        raise CompatibilityError(f"tensor {name!r} is in some sources but not in {lacking}: the fine-tunes' sources "
                                 "must share one architecture to be merged.")
    taus = []
    for tensor, reader, key in zip(finetuned, readers, keys):
        with LOCK:
            source = reader.reader.get_float(key)
        if tuple(source.shape) != tuple(tensor.shape):
            raise CompatibilityError(f"tensor {name!r}: shape {list(tensor.shape)} in the merge but "
                                     f"{list(source.shape)} in source {reader.reference} ({key!r}).")
        # θ_A goes through the same dtype mergekit gave the other inputs (a no-op unless `dtype:` differs)
        taus.append(tensor.detach().to("cpu", torch.float32) - source.to(tensor.dtype).to(torch.float32))
    kernel_name, signs, evidence, n_votes = _signs(method, name, params, votes, readers[0].prefix, names, base.shape,
                                                   taus)
    inputs = TensorInputs(kernel_name, taus, signs, evidence, [float(w) for w in weights], None, n_votes=n_votes)
    delta = method.delta(inputs, params)
    target = base.detach().to("cpu", torch.float32)
    return (target + alpha * delta).to(dtype=base.dtype, device=base.device)


def _signs(method: MergeMethod, name: str, params: Mapping[str, Any], votes: Sequence[Optional[str]],
           prefix: str, names: WeightNames, shape: torch.Size, taus: Sequence[torch.Tensor]):
    """The tensor name gradfix_hf uses (the votes' key, for seeded masks), and each task's ŝ and evidence."""
    source = method.sign_source(params)
    if source is None:
        return name, [None] * len(votes), [None] * len(votes), [None] * len(votes)
    if any(not v for v in votes):
        raise RecipeError(f"merge_method {mergekit_name(method.name)!r}: mask {params['mask']!r} needs the target's "
                          "votes: set `votes: FILE` for every model (or once under the top-level parameters).")
    if method.shared_vote and len({same_file(v) for v in votes}) > 1:
        raise RecipeError(f"merge_method {mergekit_name(method.name)!r} votes once for every source: give every "
                          f"model the same votes file (got {sorted(set(votes))}).")
    signs, evidence, n_votes, kernel_name = [], [], [], name
    for path, tau in zip(votes, taus):
        with LOCK:
            loaded = load_votes(path)
        check_votes(loaded, path, votes_aggregation(params, method))
        key = vote_key(loaded, name, prefix, names)
        skipped = None if key is not None else not_voted_key(loaded, name, prefix, names)
        if skipped is not None:  # left out of the vote as unmoved (τ_A ≡ 0): any mask gives 0 there
            loaded.check_not_voted(skipped, tau)
            signs.append(torch.zeros(tuple(shape), dtype=torch.int8))
            evidence.append(torch.zeros(tuple(shape), dtype=torch.bool))
            n_votes.append(loaded.n_samples)
            continue
        if key is None:
            close = difflib.get_close_matches(name, list(loaded.votes), n=2, cutoff=0.6)
            raise VotesFileError(f"{path}: no vote for tensor {name!r} (target {loaded.metadata['target']}"
                                 + (f"; closest: {close}" if close else "") + "): the votes were computed for "
                                 "another model or parameter set than this merge's.")
        if tuple(loaded.votes[key].shape) != tuple(shape):
            raise VotesFileError(f"{path}: tensor {key!r} has votes of shape {list(loaded.votes[key].shape)} but the "
                                 f"merge's {name!r} has shape {list(shape)}: the votes are for another model.")
        signs.append(loaded.votes[key])
        evidence.append(loaded.evidence.get(key))
        n_votes.append(loaded.n_samples)
        kernel_name = key
    return kernel_name, signs, evidence, n_votes


def _new_tensor(method: MergeMethod, name: str, finetuned: Sequence[torch.Tensor], readers: Sequence[Source],
                votes: Sequence[Optional[str]], params: Mapping[str, Any], names: WeightNames) -> torch.Tensor:
    """A tensor no θ_A has (a head added by fine-tuning): the first fine-tune's, as ``gradfix run`` copies a
    new head. If the votes have it, θ_A is not the model the votes were computed with: an error."""
    if method.sign_source(params) is not None:
        for path in votes:
            if path:
                with LOCK:
                    loaded = load_votes(path)
                if vote_key(loaded, name, readers[0].prefix, names) is not None:
                    raise CompatibilityError(
                        f"tensor {name!r} has votes in {path} but is not in source {readers[0].reference}: the "
                        "source is not the θ_A these votes were computed with.")
    logger.warning("tensor %r is not in source %s: taken unchanged from the first fine-tune, as `gradfix run` "
                   "copies a new head.", name, readers[0].reference)
    return finetuned[0].clone()
