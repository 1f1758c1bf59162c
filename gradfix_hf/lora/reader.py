"""θ_A^ft from a LoRA adapter: θ_A's tensors with the adapter's merged delta added, one tensor at a time.

:class:`LoraAdapterReader` has the interface of :class:`~gradfix_hf.storage.CheckpointReader` (``keys``,
``shape``, ``dtype``, ``get``, ``get_float``), so the transport plan, the votes (θ_B with the fine-tune's head),
the streaming merge and the multi-task / multi-source merges treat an adapter exactly like a full fine-tune.
For every tensor it presents:

* an adapted module's weight: θ_A's weight + scaling·B·A, computed as peft's ``get_delta_weight`` computes it
  (``transpose(B @ A, fan_in_fan_out) * scaling``; embeddings ``(B @ A)ᵀ * scaling``), with scaling =
  lora_alpha / r, or lora_alpha / √r for rsLoRA, r and alpha per module (``rank_pattern``/``alpha_pattern``);
  with ``lora_bias`` the bias gets scaling·b;
* a tensor the adapter stores whole (``modules_to_save``, biases trained with ``bias: all/lora_only``):
  that tensor, replacing θ_A's; a ``modules_to_save`` tensor θ_A lacks (a new classification head) is a new
  tensor, like a full fine-tune's head;
* anything else: θ_A's tensor unchanged (τ = 0 there).

Nothing is merged ahead of time: a tensor is computed when the merge asks for it (in fp32, never rounded to θ_A's
dtype, so τ is the adapter's delta up to one fp32 addition). Every adapted module is checked against θ_A when the
reader is built (name, shape, factor ranks), before any gradient work.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import torch

from ..errors import CompatibilityError, ModelResolutionError
from ..storage import CheckpointReader, check_finite
from .targets import CONV1D, kind_of, same_module

PREFIX = "base_model.model."
_LORA_PART = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_B\.bias|lora_embedding_A|lora_embedding_B)$")


@dataclass
class LoraModule:
    """One adapted module: its factors' keys in the adapter file, rank, scaling and orientation."""

    module: str
    kind: str  # "linear" (Linear or Conv1D) or "embedding"
    a_key: str
    b_key: str
    rank: int
    alpha: float
    scaling: float
    fan_in_fan_out: bool
    weight_key: str  # θ_A's key of the adapted weight
    b_bias_key: Optional[str] = None  # lora_B.bias (lora_bias=True)
    bias_key: Optional[str] = None  # θ_A's key of the bias it adds to


def _pattern_key(patterns: Iterable[str], module: str) -> Optional[str]:
    """The ``rank_pattern``/``alpha_pattern`` key that applies to ``module``, matched as peft matches it."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return None


class LoraAdapterReader:
    """Tensor access to θ_A^ft = θ_A + the adapter's merged delta (see the module docstring)."""

    def __init__(self, model, base: CheckpointReader, module_kinds: Optional[dict] = None):
        self.model = model
        self.role = model.role
        self.base = base
        self.info = model.extra["adapter"]
        self.where = f"{model.role} (adapter {model.name})"
        self._file = CheckpointReader(model)  # the adapter's own file: headers now, tensors on demand
        self._suffixes: dict[str, list[str]] = {}
        for key in base.keys():
            parts = key.split(".")
            for i in range(1, len(parts)):
                self._suffixes.setdefault(".".join(parts[i:]), []).append(key)
        self.modules: dict[str, LoraModule] = {}
        self._deltas: dict[str, tuple[LoraModule, str]] = {}  # θ_A key → (module, "weight" or "bias")
        self._replaced: dict[str, str] = {}  # θ_A key → adapter key of the whole tensor that replaces it
        self._new: dict[str, str] = {}  # tensor name (adapter's naming) → adapter key: a new head
        self._parse(module_kinds or {})

    # ------------------------------------------------------------------ parsing and checks (at construction)
    def _base_key(self, name: str) -> Optional[str]:
        """θ_A's key for a tensor the adapter names ``name`` (same naming, or one of them has the base-model
        prefix, e.g. ``bert.``); ambiguity is an error."""
        if name in self.base:
            return name
        parts = name.split(".")
        for i in range(1, len(parts)):  # adapter on the task model, θ_A saved as the bare base model
            candidate = ".".join(parts[i:])
            if candidate in self.base:
                return candidate
        hits = self._suffixes.get(name, [])  # adapter on the base model, θ_A saved as a task model
        if len(hits) > 1:
            raise CompatibilityError(f"{self.where}: tensor {name!r} matches several tensors of {self.base.role} "
                                     f"({self.base.model.name}): {hits[:4]}.")
        return hits[0] if hits else None

    def _another_architecture(self, what: str) -> CompatibilityError:
        named = self.info.base_model_name_or_path
        return CompatibilityError(
            f"{self.where}: {what} in {self.base.role} ({self.base.model.name}): the adapter was made for another "
            f"architecture" + (f" (its base_model_name_or_path is {named!r})" if named else "") + ".")

    def _parse(self, module_kinds: dict) -> None:
        groups: dict[str, dict[str, str]] = {}
        plain: dict[str, str] = {}
        for key in self._file.keys():
            name = key[len(PREFIX):] if key.startswith(PREFIX) else key
            match = _LORA_PART.match(name)
            if match:
                groups.setdefault(match["module"], {})[match["part"]] = key
                continue
            if "lora_" in name or "trainable_tokens" in name:
                raise ModelResolutionError(f"{self.where}: tensor {key!r} is not a plain LoRA factor (another "
                                           "LoRA variant?); gradfix reads plain LoRA adapters only.")
            if ".original_module." in name:  # a frozen copy of θ_A's module kept by modules_to_save
                continue
            direct = ".modules_to_save." not in name
            name = name.replace(".modules_to_save.", ".").replace(".base_layer.", ".")
            if direct or name not in plain:
                plain[name] = key
        config = self.info.config
        for module, parts in sorted(groups.items()):
            self._add_module(module, parts, config, module_kinds)
        save = list(config.modules_to_save or [])
        for name, key in plain.items():
            base_key = self._base_key(name)
            shape = self._file.shape(key)
            if base_key is None:
                module = name.rsplit(".", 1)[0]
                if not any(same_module(module, m) or module.startswith(m + ".") or f".{m}." in f".{module}."
                           for m in save + ["classifier", "score"]):
                    raise self._another_architecture(f"tensor {name!r} of the adapter has no counterpart")
                self._new[name] = key
                continue
            if tuple(shape) != tuple(self.base.shape(base_key)):
                theirs = list(self.base.shape(base_key))
                raise CompatibilityError(f"{self.where}: tensor {name!r} has shape {list(shape)} but "
                                         f"{self.base.role} ({self.base.model.name}) has {theirs} for {base_key!r}: "
                                         "the adapter was made for another architecture.")
            self._replaced[base_key] = key
        if not self.modules and not self._replaced and not self._new:
            raise ModelResolutionError(f"{self.where}: the adapter file holds no LoRA factors and no tensors.")

    def _add_module(self, module: str, parts: dict, config, module_kinds: dict) -> None:
        if "lora_A.weight" in parts and "lora_B.weight" in parts:
            kind, a_key, b_key = "linear", parts["lora_A.weight"], parts["lora_B.weight"]
        elif "lora_embedding_A" in parts and "lora_embedding_B" in parts:
            kind, a_key, b_key = "embedding", parts["lora_embedding_A"], parts["lora_embedding_B"]
        else:
            raise ModelResolutionError(f"{self.where}: module {module!r} has {sorted(parts)} but not both LoRA "
                                       "factors (a truncated or edited adapter file?).")
        a_shape, b_shape = tuple(self._file.shape(a_key)), tuple(self._file.shape(b_key))
        if len(a_shape) != 2 or len(b_shape) != 2:
            raise ModelResolutionError(f"{self.where}: module {module!r} has {len(a_shape)}-D LoRA factors (a "
                                       "convolution?); gradfix reads LoRA on Linear, Conv1D and Embedding layers.")
        rank = a_shape[0]
        if b_shape[1] != rank:
            raise ModelResolutionError(f"{self.where}: module {module!r}: lora_A has rank {rank} but lora_B "
                                       f"{b_shape[1]} (shapes {list(a_shape)} and {list(b_shape)}).")
        weight_key = self._base_key(module + ".weight")
        if weight_key is None:
            raise self._another_architecture(f"LoRA module {module!r} has no weight {module + '.weight'!r}")
        weight = tuple(self.base.shape(weight_key))
        if kind == "embedding":
            expected, fan_in_fan_out = (a_shape[1], b_shape[0]), False
        else:
            plain, flipped = (b_shape[0], a_shape[1]), (a_shape[1], b_shape[0])
            if weight == plain and plain != flipped:
                fan_in_fan_out = False
            elif weight == flipped and plain != flipped:
                fan_in_fan_out = True  # GPT-2 Conv1D stores (in, out)
            else:  # square (or a mismatch, reported below): the module's kind decides, as in peft
                known = kind_of(module, module_kinds)
                fan_in_fan_out = (known == CONV1D) if known is not None else bool(config.fan_in_fan_out)
            expected = flipped if fan_in_fan_out else plain
        if weight != expected:
            raise CompatibilityError(
                f"{self.where}: LoRA module {module!r} gives a delta of shape {list(expected)} (lora_A "
                f"{list(a_shape)}, lora_B {list(b_shape)}) but {self.base.role} ({self.base.model.name}) has "
                f"{list(weight)} for {weight_key!r}: the adapter was made for another architecture or size.")
        alpha_key = _pattern_key(config.alpha_pattern or {}, module)
        alpha = float(config.alpha_pattern[alpha_key] if alpha_key is not None else config.lora_alpha)
        scaling = alpha / math.sqrt(rank) if config.use_rslora else alpha / rank
        entry = LoraModule(module, kind, a_key, b_key, rank, alpha, scaling, fan_in_fan_out, weight_key)
        if "lora_B.bias" in parts:
            entry.b_bias_key = parts["lora_B.bias"]
            entry.bias_key = self._base_key(module + ".bias")
            if entry.bias_key is None:
                raise self._another_architecture(f"LoRA module {module!r} has a lora_B bias but no bias")
            self._deltas[entry.bias_key] = (entry, "bias")
        self.modules[module] = entry
        self._deltas[weight_key] = (entry, "weight")

    # ------------------------------------------------------------------ the reader interface
    def keys(self) -> list[str]:
        return list(self.base.keys()) + list(self._new)

    def __contains__(self, key: str) -> bool:
        return key in self._new or key in self.base

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._file.shape(self._new[key])) if key in self._new else self.base.shape(key)

    def dtype(self, key: str) -> torch.dtype:
        if key in self._new:
            return self._file.dtype(self._new[key])
        if key in self._replaced and key not in self._deltas:
            return self._file.dtype(self._replaced[key])
        return self.base.dtype(key)

    def delta(self, key: str) -> Optional[torch.Tensor]:
        """The adapter's merged delta for θ_A's tensor ``key`` (fp32), or None if it adapts nothing there."""
        if key not in self._deltas:
            return None
        entry, part = self._deltas[key]
        if part == "bias":
            return self._file.get(entry.b_bias_key).float() * entry.scaling
        a = self._file.get(entry.a_key).float()
        b = self._file.get(entry.b_key).float()
        product = b @ a
        if entry.kind == "embedding" or entry.fan_in_fan_out:
            product = product.T
        return product * entry.scaling

    def _float(self, key: str) -> torch.Tensor:
        base = self._file.get(self._replaced[key]).float() if key in self._replaced else self.base.get(key).float()
        delta = self.delta(key)
        return base if delta is None else base + delta

    def get(self, key: str) -> torch.Tensor:
        if key in self._new:
            return self._file.get(self._new[key])
        if key in self._deltas:
            return self._float(key).to(self.dtype(key))
        if key in self._replaced:
            return self._file.get(self._replaced[key])
        return self.base.get(key)

    def get_checked(self, key: str) -> torch.Tensor:
        """The tensor in θ_A's dtype, checked for NaN/inf."""
        if key not in self._new and key not in self._deltas and key not in self._replaced:
            return self.base.get_checked(key)
        return self._checked(self.get(key), key)

    def get_float(self, key: str) -> torch.Tensor:
        """The tensor in fp32 (an adapted one never rounded to θ_A's dtype), checked for NaN/inf."""
        if key not in self._new and key not in self._deltas and key not in self._replaced:
            return self.base.get_float(key)
        return self._checked(self.get(key).float() if key in self._new else self._float(key), key)

    def _checked(self, tensor: torch.Tensor, key: str) -> torch.Tensor:
        check_finite(tensor, f"{self.where} tensor {key!r}")
        return tensor

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for key in self.keys():
            yield key, self.get(key)

    def close(self) -> None:
        self._file.close()
