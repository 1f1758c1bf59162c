"""Which coordinates of an architecture may be permuted without changing what the model computes: data, per
``model_type``, read by the weight matching of :mod:`.alignment`.

A *group* is a set of tensors of one layer that share one permutation of *units* along an axis: the hidden units of
a feed-forward block (rows of its input projections, columns of its output projection), or the attention heads
(blocks of rows of Q, K, V; blocks of columns of the output projection). A tensor entry is ``(suffix, axis,
sections)``: the tensor named ``<layer prefix><suffix>`` is cut along ``axis`` into ``sections`` equal parts
(GPT-2's fused ``c_attn`` holds Q, K and V: 3 sections), each part into one block per unit, and every part is
permuted alike. A group's unit count is a config field (the heads) or, when ``units`` is None, the length of its
first tensor's axis (one unit per hidden neuron). With grouped-query attention the units are the key/value heads:
the query heads of a group move with their key/value head, so the blocks of ``q_proj`` are a whole group's rows.
Rotary embeddings pair dimensions inside a head, which stays whole: only whole heads move. The *residual stream*
is one more permutation, shared by every layer: ``residual`` lists the tensors with an axis along it (embeddings'
columns, norms, every projection's residual side); LayerNorm and RMSNorm act on each dimension alone, so permuting
them with the stream leaves the function unchanged.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import CompatibilityError


@dataclass(frozen=True)
class PermutationGroup:
    """Tensors of one layer sharing one permutation of ``units`` (a config field, or None: one per index)."""

    name: str
    tensors: tuple[tuple[str, int, int], ...]  # (suffix, axis, sections)
    units: Optional[str] = None


@dataclass(frozen=True)
class ArchitectureRules:
    """The layers of an architecture (a regex whose match is a layer's name prefix), their groups, and the
    tensors along the residual stream: ``(name regex, axis)``, matched against the end of a parameter's name."""

    layer: str
    groups: tuple[PermutationGroup, ...]
    residual: tuple[tuple[str, int], ...] = ()


_BERT_HEADS = tuple((f"attention.self.{m}.{p}", 0, 1) for m in ("query", "key", "value") for p in ("weight", "bias"))
_LLAMA_FFN = PermutationGroup("ffn", (("mlp.gate_proj.weight", 0, 1), ("mlp.up_proj.weight", 0, 1),
                                      ("mlp.down_proj.weight", 1, 1)))
_LLAMA_HEADS = (("self_attn.q_proj.weight", 0, 1), ("self_attn.k_proj.weight", 0, 1),
                ("self_attn.v_proj.weight", 0, 1), ("self_attn.o_proj.weight", 1, 1))

_BERT_RESIDUAL = (
    (r"embeddings\.(word|position|token_type)_embeddings\.weight", 1), (r"LayerNorm\.(weight|bias)", 0),
    (r"attention\.self\.(query|key|value)\.weight", 1), (r"(attention\.)?output\.dense\.(weight|bias)", 0),
    (r"intermediate\.dense\.weight", 1), (r"pooler\.dense\.weight", 1))
_GPT2_RESIDUAL = (  # Conv1D weights are (in, out)
    (r"wte\.weight", 1), (r"wpe\.weight", 1), (r"ln_(1|2|f)\.(weight|bias)", 0), (r"(c_attn|c_fc)\.weight", 0),
    (r"c_proj\.weight", 1), (r"c_proj\.bias", 0), (r"score\.weight", 1), (r"lm_head\.weight", 1))
_LLAMA_RESIDUAL = (
    (r"embed_tokens\.weight", 1), (r"(input_layernorm|post_attention_layernorm|norm)\.weight", 0),
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj)\.weight", 1), (r"(o_proj|down_proj)\.weight", 0),
    (r"(lm_head|score)\.weight", 1))

RULES: dict[str, ArchitectureRules] = {
    "bert": ArchitectureRules(r".*encoder\.layer\.\d+\.", (
        PermutationGroup("ffn", (("intermediate.dense.weight", 0, 1), ("intermediate.dense.bias", 0, 1),
                                 ("output.dense.weight", 1, 1))),
        PermutationGroup("heads", _BERT_HEADS + (("attention.output.dense.weight", 1, 1),), "num_attention_heads"),
    ), _BERT_RESIDUAL),
    "gpt2": ArchitectureRules(r".*\bh\.\d+\.", (  # Conv1D weights are (in, out)
        PermutationGroup("ffn", (("mlp.c_fc.weight", 1, 1), ("mlp.c_fc.bias", 0, 1), ("mlp.c_proj.weight", 0, 1))),
        PermutationGroup("heads", (("attn.c_attn.weight", 1, 3), ("attn.c_attn.bias", 0, 3),
                                   ("attn.c_proj.weight", 0, 1)), "n_head"),
    ), _GPT2_RESIDUAL),
    "llama": ArchitectureRules(r".*\blayers\.\d+\.", (
        _LLAMA_FFN, PermutationGroup("heads", _LLAMA_HEADS, "num_key_value_heads")), _LLAMA_RESIDUAL),
    "qwen2": ArchitectureRules(r".*\blayers\.\d+\.", (
        _LLAMA_FFN, PermutationGroup("heads", _LLAMA_HEADS + tuple((f"self_attn.{m}_proj.bias", 0, 1)
                                                                    for m in "qkv"), "num_key_value_heads")),
        _LLAMA_RESIDUAL),
}


def rules_for(model_type: str) -> ArchitectureRules:
    """The permutation rules of ``model_type``, or an error naming the architectures that have some."""
    if model_type not in RULES:
        raise CompatibilityError(f"align: weight-matching has no permutation rules for model_type {model_type!r} "
                                 f"(it has rules for {', '.join(sorted(RULES))}); run without align.")
    return RULES[model_type]


def layer_groups(names: list[str], model_type: str) -> list[tuple[str, PermutationGroup, list[tuple[str, int, int]]]]:
    """Every (layer prefix, group, [(full name, axis, sections)]) of ``names`` (a layout's parameter names) whose
    tensors are all present; a group with only some of its tensors present is an error (the permutation would
    leave the model's function changed)."""
    rules = rules_for(model_type)
    prefixes = sorted({m.group(0) for name in names if (m := re.match(rules.layer, name))},
                      key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p)])
    present = set(names)
    out = []
    for prefix in prefixes:
        for group in rules.groups:
            tensors = [(prefix + suffix, axis, sections) for suffix, axis, sections in group.tensors]
            found = [t for t in tensors if t[0] in present]
            if not found:
                continue
            if len(found) != len(tensors):
                missing = [t[0] for t in tensors if t[0] not in present]
                raise CompatibilityError(f"align: the {group.name} of {prefix.rstrip('.')} lacks {missing}: its "
                                         "units cannot be permuted without changing the model.")
            out.append((prefix, group, tensors))
    return out


def residual_tensors(names: list[str], model_type: str) -> list[tuple[str, int]]:
    """Every ``(name, axis)`` of ``names`` whose ``axis`` runs along the residual stream (the first rule that
    matches the end of the name says which axis)."""
    rules = rules_for(model_type).residual
    out = []
    for name in names:
        axis = next((axis for pattern, axis in rules if re.search(rf"(^|\.){pattern}$", name)), None)
        if axis is not None:
            out.append((name, axis))
    return out


def unit_count(group: PermutationGroup, config, first_length: int, sections: int) -> int:
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


def _layer_key(prefix: str, group: PermutationGroup) -> str:
    """A group's name whatever the model's prefix (``bert.`` or none): its layer's index and the group."""
    layer = re.findall(r"\d+", prefix)[-1]
    return f"{layer}.{group.name}"


def random_symmetry(state: dict, config, seed: int, residual: bool = True) -> dict[str, torch.Tensor]:
    """A random order of the residual stream (``residual``) and of every group's units of the model whose tensors
    are ``state``: a permutation that leaves what the model computes unchanged (experiments build permuted
    releases with it; weight matching must find it back). Keys: ``residual`` and ``<layer>.<group>``."""
    generator = torch.Generator().manual_seed(seed)
    orders = {}
    if residual:
        orders["residual"] = torch.randperm(config.hidden_size, generator=generator)
    for prefix, group, entries in layer_groups(list(state), config.model_type):
        name, axis, sections = entries[0]
        units = unit_count(group, config, state[name].shape[axis], sections)
        order = torch.randperm(units, generator=generator)
        if (order == torch.arange(units)).all():  # e.g. two key/value heads: make sure they move
            order = order.roll(1)
        orders[_layer_key(prefix, group)] = order
    return orders


def permute_state_dict(state: dict, config, orders: dict[str, torch.Tensor]) -> dict:
    """``state`` with :func:`random_symmetry`'s orders applied (the same function, other coordinates)."""
    out = dict(state)
    if "residual" in orders:
        for name, axis in residual_tensors(list(out), config.model_type):
            out[name] = out[name].index_select(axis, orders["residual"])
    for prefix, group, entries in layer_groups(list(out), config.model_type):
        order = orders[_layer_key(prefix, group)]
        for name, axis, sections in entries:
            out[name] = out[name].index_select(axis, block_index(out[name].shape[axis], sections, len(order), order))
    return out
