"""Activation checkpointing of θ_B's blocks during the vote (``vote_gradient_checkpointing: true``).

Why: a vote's backward keeps every layer's activations, which for long rows outgrow θ_B itself (and FSDP2 shards
weights, not activations). Each block (the classes a model names in ``_no_split_modules``) is wrapped with
PyTorch's composable ``checkpoint``, which keeps parameter names and composes with ``fully_shard``, and works in
eval mode (Hugging Face's ``gradient_checkpointing_enable`` only acts while training, with dropout on). The block is
recomputed in the backward; the vote keeps only the inputs of the layers it forms per-sample gradients from. The
recomputed values are the forward's own (the same kernels on the same inputs), so the votes do not change.
"""
from __future__ import annotations

import torch

from ..errors import RecipeError
from .sharded_model import block_classes


def checkpoint_blocks(model: torch.nn.Module) -> int:
    """Checkpoint every block of ``model`` (before ``fully_shard``, as PyTorch composes them); returns how many."""
    from torch.distributed._composable import checkpoint

    names = block_classes(model)
    blocks = [module for module in model.modules() if type(module).__name__ in names]
    if not blocks:
        raise RecipeError(f"vote_gradient_checkpointing: {type(model).__name__} names no blocks (_no_split_modules) "
                          "to checkpoint; vote without it.")
    for block in blocks:
        checkpoint(block)
    for config in {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}.values():
        if getattr(config, "use_cache", False):
            config.use_cache = False  # a recomputed block would append its keys to the KV cache a second time
    return len(blocks)
