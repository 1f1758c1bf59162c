"""Lazy, tensor-by-tensor access to a model's weights (safetensors memory-mapped; pickle only if allowed).

The merge stage never loads a whole model: it asks a :class:`CheckpointReader` for one tensor at a time.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import torch
from safetensors import SafetensorError, safe_open

from .errors import ModelResolutionError, NonFiniteError
from .hub import ResolvedModel


class CheckpointReader:
    """Maps tensor names to the file holding them and reads single tensors on demand."""

    def __init__(self, model: ResolvedModel):
        self.model = model
        self.role = model.role
        self._handles: dict[Path, object] = {}
        self._where: dict[str, Path] = {}
        self._pickled: dict[str, torch.Tensor] = {}
        for path in model.weight_files:
            if model.weight_format == "safetensors":
                handle = self._open(path)
                for key in handle.keys():
                    self._where[key] = path
            else:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                for key, value in state.items():
                    if isinstance(value, torch.Tensor):
                        self._pickled[key] = value
                        self._where[key] = path

    def _open(self, path: Path):
        if path not in self._handles:
            try:
                self._handles[path] = safe_open(str(path), framework="pt", device="cpu")
            except (SafetensorError, OSError, ValueError) as exc:
                raise ModelResolutionError(f"{self.role}: corrupt or truncated checkpoint file {path}: {exc}") from None
        return self._handles[path]

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def shape(self, key: str) -> tuple[int, ...]:
        if key in self._pickled:
            return tuple(self._pickled[key].shape)
        return tuple(self._open(self._where[key]).get_slice(key).get_shape())

    def dtype(self, key: str) -> torch.dtype:
        if key in self._pickled:
            return self._pickled[key].dtype
        names = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                 "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                 "BOOL": torch.bool}
        return names.get(self._open(self._where[key]).get_slice(key).get_dtype(), torch.float32)

    def get(self, key: str) -> torch.Tensor:
        if key in self._pickled:
            return self._pickled[key]
        try:
            return self._open(self._where[key]).get_tensor(key)
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelResolutionError(
                f"{self.role}: cannot read tensor {key!r} from {self._where[key]} (corrupt or truncated?): {exc}"
            ) from None

    def get_float(self, key: str) -> torch.Tensor:
        """The tensor in fp32, checked for NaN/inf."""
        tensor = self.get(key).float()
        check_finite(tensor, f"{self.role} ({self.model.name}) tensor {key!r}")
        return tensor

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for key in self._where:
            yield key, self.get(key)


def check_finite(tensor: torch.Tensor, what: str) -> None:
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise NonFiniteError(f"{what} has {bad} NaN/inf value(s).")


def align_names(reader: CheckpointReader, names: list[str], prefix: str,
                aliases: Optional[dict[str, list[str]]] = None) -> dict[str, str]:
    """Map model parameter names to the checkpoint's keys.

    A base-model checkpoint stores ``embeddings.x`` where a task model names it ``bert.embeddings.x`` (and
    the other way round); tied weights may be stored under any of their names. This is the same matching
    ``from_pretrained`` does, made explicit so every checkpoint lines up with the target's names.
    """
    aliases = aliases or {}
    found: dict[str, str] = {}
    for name in names:
        for candidate in [name, *aliases.get(name, [])]:
            options = [candidate]
            if prefix and candidate.startswith(prefix + "."):
                options.append(candidate[len(prefix) + 1:])
            elif prefix:
                options.append(f"{prefix}.{candidate}")
            hit = next((o for o in options if o in reader), None)
            if hit is not None:
                found[name] = hit
                break
    return found
