"""Large weights reached through a few positions per sample (LM heads), folded in blocks of rows.

Why a module of its own: the per-sample gradient of such a weight is low-rank (the scored tokens, plus a tied
embedding's rows), so instead of materialising it whole the batched engine (:mod:`.batched_engine`) has it
formed and folded here block by block, with the layer rules of :mod:`.per_sample_rules`.
"""
from __future__ import annotations

import torch
from torch import nn

from .fold import FOLD_PIECE, VoteFold, limits_from_extremes
from .per_sample_rules import active_mask, flat_positions, is_linear, linear_operands

LOW_RANK = 4  # a large weight reached through at most this many positions per sample is folded in row blocks


def low_rank_uses(ordered: list) -> bool:
    """Whether a parameter's uses in this micro-batch are fp32 linear weights that every sample reaches through
    at most ``LOW_RANK`` positions (an LM head: the scored tokens), plus any embedding lookups (tied rows)."""
    linear = False
    for module, pname, x, grad, _ in ordered:
        if isinstance(module, nn.Embedding):
            continue
        if not (is_linear(module) and pname == "weight" and grad.dtype == torch.float32):
            return False
        g = flat_positions(grad, grad.shape[0], grad.shape[-1])
        if g.shape[1] > LOW_RANK and int(active_mask(g).sum(1).max()) > LOW_RANK:
            return False
        linear = True
    return linear


def fold_in_row_blocks(name: str, ordered: list, rows: slice, fold: VoteFold) -> None:
    """Fold one sample's gradient of a large weight whose uses qualify for :func:`low_rank_uses`, without
    materialising it.

    The gradient is formed in blocks of weight rows that stay in cache, twice: once for the sample's largest
    and smallest entry (its noise limit), once to fold each block at that limit. Forming a rank-K block
    costs K multiply-adds per entry, less than writing the whole tensor (150 MB for GPT-2's) to memory and
    streaming it back for each pass of the fold.
    """
    outer, lookups = [], []
    for module, pname, x, grad, _ in ordered:
        if isinstance(module, nn.Embedding):
            ids = x[rows].reshape(-1)
            g = grad[rows].reshape(-1, module.embedding_dim).float()
            if module.padding_idx is not None:
                keep = ids != module.padding_idx
                ids, g = ids[keep], g[keep]
            lookups.append((ids, g))
        else:
            outer.append(linear_operands(module, x, grad, rows))
    n_rows, width = outer[0][0].shape[1], outer[0][1].shape[2]
    step = max(1, FOLD_PIECE // width)

    def block(r0: int) -> torch.Tensor:
        r1 = min(n_rows, r0 + step)
        out = fold.scratch.take("per_sample", (1, r1 - r0, width), torch.float32, outer[0][0].device)
        torch.bmm(outer[0][0][:, r0:r1], outer[0][1], out=out)
        for left, right in outer[1:]:
            out.baddbmm_(left[:, r0:r1], right)
        for ids, g in lookups:
            inside = (ids >= r0) & (ids < r1)
            out[0].index_add_(0, ids[inside] - r0, g[inside])
        return out.view(1, -1)

    largest = smallest = None
    for r0 in range(0, n_rows, step):
        values = block(r0)
        high, low = values.amax(1), values.amin(1)
        largest = high if largest is None else torch.maximum(largest, high)
        smallest = low if smallest is None else torch.minimum(smallest, low)
    limit = fold.checked_limits(name, limits_from_extremes(largest, smallest))
    for r0 in range(0, n_rows, step):
        fold.dense_columns(name, block(r0), limit, start=r0 * width)
