"""T5-family relative-position biases voted per sample without the one-sample loop.

Why a module of its own: such a bias is an embedding looked up with [q, k] bucket ids, with no batch
dimension, then broadcast over the batch, so no layer rule (:mod:`.per_sample_rules`) can split it per
sample; it is handled by wrapping the attention's ``compute_bias`` instead of by the engine's hooks.
"""
from __future__ import annotations

import torch
from torch import nn

from .fold import VoteFold


class _PerSampleCopies(torch.autograd.Function):
    """Identity that gives every sample its own copy of a batch-shared tensor ([1, ...] → [B, ...]); its
    backward hands the per-sample gradients to ``callback`` and returns their sum (what broadcasting gives)."""

    @staticmethod
    def forward(ctx, shared, batch, callback):
        ctx.callback = callback
        return shared.expand(batch, *shared.shape[1:]).clone()

    @staticmethod
    def backward(ctx, grad):
        ctx.callback(grad)
        return grad.sum(0, keepdim=True), None, None


def relative_bias_modules(model: nn.Module) -> dict[nn.Module, nn.Module]:
    """T5-family attention modules with a relative-position bias: their bias embedding → the module."""
    found = {}
    for module in model.modules():
        table = getattr(module, "relative_attention_bias", None)
        if isinstance(table, nn.Embedding) and callable(getattr(module, "compute_bias", None)):
            found[table] = module
    return found


class RelativeBias:
    """Per-sample votes of T5 relative-position bias tables without the one-sample loop.

    ``compute_bias`` returns a [1, heads, q, k] bias shared by the batch (and by every layer of the stack).
    During the vote it is wrapped so that each sample gets its own copy; the copy's backward then holds
    ∂ℓ_n/∂bias_n summed over the layers that used it, and the gradient of the table row of bucket b is the
    sum over the (q, k) positions in bucket b, per sample (a scatter-add).
    """

    def __init__(self, tables: dict[nn.Module, tuple[nn.Module, str]], fold: "VoteFold"):
        self.tables = tables  # embedding → (attention module, vote name)
        self.fold = fold
        self.batch = 0
        self.active = False
        self.buckets: dict[nn.Module, torch.Tensor] = {}
        self.handles = [table.register_forward_hook(self._capture) for table in tables]
        self.originals = {}
        for table, (attention, name) in tables.items():
            self.originals[attention] = attention.compute_bias
            attention.compute_bias = self._wrap(attention, table, name)

    def _capture(self, table, args, output):
        self.buckets[table] = args[0].detach()

    def _wrap(self, attention, table, name):
        original = attention.compute_bias

        def compute_bias(*args, **kwargs):
            bias = original(*args, **kwargs)
            if not self.active or not torch.is_grad_enabled():
                return bias
            buckets = self.buckets.pop(table)
            return _PerSampleCopies.apply(bias.detach().requires_grad_(True), self.batch,
                                          lambda grad: self._fold(table, name, buckets, grad))

        return compute_bias

    def _fold(self, table: nn.Module, name: str, buckets: torch.Tensor, grad: torch.Tensor) -> None:
        batch, heads = grad.shape[0], grad.shape[1]
        per_position = grad.permute(0, 2, 3, 1).reshape(batch, -1, heads).float()  # [B, q·k, heads]
        per_sample = torch.zeros(batch, table.num_embeddings, heads, dtype=torch.float32, device=grad.device)
        per_sample.index_add_(1, buckets.reshape(-1), per_position)
        self.fold.dense(name, per_sample)

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        for attention in self.originals:
            del attention.compute_bias  # back to the class's method
