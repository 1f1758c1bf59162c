"""Which modules of a model LoRA can adapt, by name: Linear, GPT-2's Conv1D (weights stored transposed: peft's
``fan_in_fan_out``) and Embedding. Read from the output layout's model class built on the meta device (no
weights), so the adapter reader and the export agree with peft on each module's kind."""
from __future__ import annotations

from typing import Optional

import torch

LINEAR, CONV1D, EMBEDDING = "linear", "conv1d", "embedding"


def module_kinds(layout) -> dict[str, str]:
    """{module name: kind} for every module of the layout's model: ``linear``, ``conv1d``, ``embedding``, or the
    class name of any other module (LayerNorm, ...). Empty if the model cannot be built."""
    try:
        with torch.device("meta"):
            model = layout.model_class.from_config(layout.config)
    except Exception:  # noqa: BLE001 (a model class that cannot be built on meta: fall back to shapes/config)
        return {}
    kinds = {}
    for name, module in model.named_modules():
        if not name:
            continue
        if isinstance(module, torch.nn.Linear):
            kinds[name] = LINEAR
        elif type(module).__name__ == "Conv1D":  # transformers.pytorch_utils.Conv1D (GPT-2 family)
            kinds[name] = CONV1D
        elif isinstance(module, torch.nn.Embedding):
            kinds[name] = EMBEDDING
        else:
            kinds[name] = type(module).__name__
    return kinds


def same_module(a: str, b: str) -> bool:
    """Two module names that denote the same module under different prefixes (``bert.x`` and ``x``)."""
    return a == b or a.endswith("." + b) or b.endswith("." + a)


def kind_of(name: str, kinds: dict[str, str]) -> Optional[str]:
    """The kind of module ``name`` (matched exactly, else by dotted suffix), or None if unknown."""
    if name in kinds:
        return kinds[name]
    hits = {kind for module, kind in kinds.items() if same_module(module, name)}
    return hits.pop() if len(hits) == 1 else None
