"""Per-layer rules for per-sample weight gradients, from a layer's recorded input and output gradient.

Why a module of its own: these are the formulas (Linear / GPT-2 Conv1D, Embedding, LayerNorm, Conv2d, and
``torch.func`` on any other single-input module) and the test of which layers they apply to; they know nothing
of hooks, micro-batches or the fold, which the batched engine (:mod:`.batched_engine`) and the row-block fold
of large low-rank weights (:mod:`.row_blocks`) build on.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

try:  # GPT-2 style Conv1D (weight stored as [in, out])
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover
    Conv1D = ()


def flat_positions(x: torch.Tensor, batch: int, last: int) -> torch.Tensor:
    return x.reshape(batch, -1, last)


def per_sample(module: nn.Module, pname: str, x: torch.Tensor, g: torch.Tensor, rows: slice,
               options: Optional[dict] = None, out: Optional[Callable] = None) -> torch.Tensor:
    """Dense per-sample gradient [c, *param.shape] of ``module.<pname>`` for samples ``rows`` (``options``: the
    call's constant keyword arguments, for the torch.func path; ``out(shape)``: a reusable buffer for the
    weight gradients of linear layers)."""
    b = x.shape[0]
    if is_linear(module):
        if pname == "bias":
            return flat_positions(g, b, g.shape[-1])[rows].sum(1)
        left, right = linear_operands(module, x, g, rows)
        shape = (left.shape[0], left.shape[1], right.shape[2])
        return torch.bmm(left, right, out=out(shape) if out else None)
    if isinstance(module, nn.LayerNorm):
        shape = module.normalized_shape
        gf = g.reshape(b, -1, *shape)[rows]
        if pname == "bias":
            return gf.sum(1)
        xhat = F.layer_norm(x[rows].float(), shape, eps=module.eps).reshape(gf.shape)
        return (gf * xhat).sum(1)
    if isinstance(module, nn.Embedding):
        out = torch.zeros(x[rows].shape[0], module.num_embeddings, module.embedding_dim, dtype=g.dtype,
                          device=g.device)
        add_embedding_rows(out, module, x, g, rows)
        return out
    if isinstance(module, nn.Conv2d):
        gf = g[rows]
        if pname == "bias":
            return gf.sum((2, 3))
        cols = F.unfold(x[rows].to(gf.dtype), module.kernel_size, module.dilation, module.padding, module.stride)
        grad = torch.einsum("bol,bil->boi", gf.flatten(2), cols)
        return grad.reshape(gf.shape[0], *module.weight.shape)
    return _functional_per_sample(module, pname, x[rows], g[rows], options)


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or bool(Conv1D and isinstance(module, Conv1D))


def linear_operands(module: nn.Module, x: torch.Tensor, g: torch.Tensor, rows: slice
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(left [c, weight rows, K], right [c, K, weight columns]) with left @ right = the per-sample weight
    gradients Σ_t δ_t ⊗ a_t of samples ``rows``, over their K active positions."""
    b = x.shape[0]
    conv1d = not isinstance(module, nn.Linear)  # GPT-2's Conv1D stores its weight as [in, out]
    n_in, n_out = (module.weight.shape[0], module.nf) if conv1d else (module.in_features, module.out_features)
    gf = flat_positions(g, b, n_out)[rows]
    gf, xf = active_positions(gf, flat_positions(x, b, n_in)[rows].to(gf.dtype))
    left, right = (xf, gf) if conv1d else (gf, xf)
    return left.transpose(1, 2), right


def active_positions(g: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the positions where a sample's output gradient is exactly 0 from Σ_t g_t ⊗ x_t ([c, T, ·] each).

    Most positions carry no gradient into an LM head (only the scored tokens do), nor into a classifier's last
    layer (only [CLS]); skipping them makes those per-sample products up to T× cheaper. The sum is unchanged:
    the skipped terms are exact zeros. Each sample keeps its own active positions (gathered to the front), the
    rest of the max-count slots are filled with inactive positions, whose terms are 0.
    """
    positions = g.shape[1]
    if positions <= 2:
        return g, x
    active = active_mask(g)
    keep = int(active.sum(1).max())
    if keep > positions // 2:
        return g, x
    order = torch.argsort(active.to(torch.uint8), dim=1, descending=True, stable=True)[:, :keep].unsqueeze(-1)
    return g.gather(1, order.expand(-1, -1, g.shape[2])), x.gather(1, order.expand(-1, -1, x.shape[2]))


def active_mask(g: torch.Tensor) -> torch.Tensor:
    """[c, T] bool: the positions of ``g`` [c, T, ·] whose output gradient is not exactly 0 (two vectorised
    reductions: faster than ``ne(0).any(-1)``)."""
    return g.amax(-1).ne(0) | g.amin(-1).ne(0)


def _functional_per_sample(module: nn.Module, pname: str, x: torch.Tensor, g: torch.Tensor,
                           options: Optional[dict] = None) -> torch.Tensor:
    """Exact per-sample gradient of any single-input module via ``torch.func`` on that module alone."""
    from torch.func import functional_call, grad, vmap

    def inner(value, x_n, g_n):
        out = functional_call(module, {pname: value}, (x_n.unsqueeze(0),), options or {})
        return (out * g_n.unsqueeze(0)).sum()

    return vmap(grad(inner), in_dims=(None, 0, 0))(getattr(module, pname).detach(), x, g)


RULE_TYPES = (nn.Linear, nn.Embedding, nn.LayerNorm, nn.Conv2d) + ((Conv1D,) if Conv1D else ())


def constant_options(kwargs: dict) -> bool:
    """Keyword arguments that are plain constants (e.g. CLIP's ``interpolate_pos_encoding=False``): a call with
    them still has one batched input, and the torch.func path can repeat it without side effects."""
    return all(v is None or isinstance(v, (bool, int, float, str)) for v in kwargs.values())


def rule_applies(module: nn.Module) -> bool:
    if isinstance(module, nn.Embedding):
        return module.max_norm is None and not module.scale_grad_by_freq and not module.sparse
    if isinstance(module, nn.Conv2d):
        return module.groups == 1 and module.padding_mode == "zeros" and isinstance(module.padding, tuple)
    return isinstance(module, RULE_TYPES)


def add_embedding_rows(total: torch.Tensor, module: nn.Embedding, x: torch.Tensor, g: torch.Tensor,
                       rows: slice) -> None:
    """total[c, vocab, dim] += the per-sample embedding gradient (rows of the tokens each sample contains)."""
    ids = x[rows].reshape(x[rows].shape[0], -1)
    gf = g[rows].reshape(ids.shape[0], -1, module.embedding_dim).to(total.dtype)
    if module.padding_idx is not None:
        gf = gf * (ids != module.padding_idx).unsqueeze(-1)
    total.scatter_add_(1, ids.unsqueeze(-1).expand_as(gf), gf)
