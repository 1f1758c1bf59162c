"""The ``output`` section: where the result is written, its dtype and shard size, and whether it is written as a
LoRA adapter for θ_B (``as_lora``) instead of full weights."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Union

from ..errors import RecipeError
from .validation import build, check_choice, check_fields, paths_as_strings

DTYPES = ("float32", "float16", "bfloat16")
_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30,
               "TIB": 2**40}


def parse_size(size: Union[int, str]) -> int:
    """'5GB' / '200MB' / '1.5GiB' / 1000 → bytes (the ``output.max_shard_size`` syntax)."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B)\s*", size.upper()) if isinstance(size, str) else None
    if not match or float(match.group(1)) <= 0:
        raise RecipeError(f"output.max_shard_size: cannot read {size!r} (use e.g. 5GB, 200MB or a positive byte "
                          "count).")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


@dataclass(frozen=True)
class LoraExportConfig:
    """``output.as_lora``: write a LoRA adapter for θ_B instead of full weights, by truncated SVD of each masked
    delta: a fixed ``rank``, or per module the smallest rank keeping ``energy`` of the delta's squared Frobenius
    norm (with ``rank`` as a cap when both are given). YAML: ``as_lora: 16`` or ``as_lora: {energy: 0.9}``.

    ``modules_to_save``: modules whose changed weights are stored whole rather than factored, as peft's
    ``modules_to_save`` (e.g. ``[embed_tokens, lm_head]`` of a chat fine-tune that trained them whole); default:
    those of θ_A^ft when it is a LoRA adapter, else none (``[]``: factor every weight)."""

    rank: Optional[int] = None
    energy: Optional[float] = None
    modules_to_save: Optional[list[str]] = None

    WHERE = "output.as_lora"

    def __post_init__(self) -> None:
        if self.rank is None and self.energy is None:
            raise RecipeError("output.as_lora: give a rank (e.g. {rank: 16}), an energy threshold (e.g. "
                              "{energy: 0.9}), or both.")
        check_fields(self, self.WHERE)
        if self.rank is not None and self.rank < 1:
            raise RecipeError(f"output.as_lora.rank: must be a positive integer, got {self.rank!r}.")
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise RecipeError(f"output.as_lora.energy: must be a number in (0, 1], got {self.energy!r}.")
        if self.modules_to_save is not None and (not isinstance(self.modules_to_save, list) or not all(
                isinstance(m, str) and m for m in self.modules_to_save)):
            raise RecipeError("output.as_lora.modules_to_save: a list of module names (e.g. [embed_tokens, lm_head]), "
                              f"got {self.modules_to_save!r}.")


@dataclass(frozen=True)
class OutputConfig:
    """Where and how the transported model is written (full weights, or a LoRA adapter with ``as_lora``)."""

    path: Optional[str] = None
    dtype: Optional[str] = None
    max_shard_size: Union[int, str] = "5GB"
    as_lora: Optional[LoraExportConfig] = None

    WHERE = "output"

    def __post_init__(self) -> None:
        if self.as_lora is not None and not isinstance(self.as_lora, LoraExportConfig):
            raw = {"rank": self.as_lora} if isinstance(self.as_lora, int) and not isinstance(self.as_lora, bool) \
                else self.as_lora
            object.__setattr__(self, "as_lora", build(LoraExportConfig, raw, "output.as_lora"))
        paths_as_strings(self, ("path",))
        parse_size(self.max_shard_size)  # an int or a size like 5GB, or "cannot read" naming the key
        check_fields(self, self.WHERE)
        if self.dtype is not None:
            check_choice(self.dtype, DTYPES, "output.dtype")


