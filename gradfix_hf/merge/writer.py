"""Sharded safetensors output written tensor by tensor, in the layout ``from_pretrained`` expects."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import torch
from safetensors.torch import save_file

from ..recipe import parse_size


class ShardedSafetensorsWriter:
    """Buffers tensors until a shard is full, then writes it; ``close()`` names shards and writes the index."""

    def __init__(self, folder: Union[str, Path], max_shard_size: Union[int, str] = "5GB"):
        self.folder = Path(folder)
        self.max_bytes = parse_size(max_shard_size)
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffered = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self.total_size = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._buffer and self._buffered + size > self.max_bytes:
            self._flush()
        self._buffer[name] = tensor.contiguous()
        self._buffered += size
        self.total_size += size

    def _flush(self) -> None:
        path = self.folder / f".shard-{len(self._shards):05d}.tmp"
        save_file(self._buffer, str(path), metadata={"format": "pt"})
        self._shards.append((path, list(self._buffer)))
        self._buffer, self._buffered = {}, 0

    def close(self) -> list[str]:
        if self._buffer or not self._shards:
            self._flush()
        count = len(self._shards)
        if count == 1:
            self._shards[0][0].rename(self.folder / "model.safetensors")
            return ["model.safetensors"]
        weight_map, names = {}, []
        for i, (path, keys) in enumerate(self._shards, start=1):
            name = f"model-{i:05d}-of-{count:05d}.safetensors"
            path.rename(self.folder / name)
            names.append(name)
            weight_map.update({k: name for k in keys})
        index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return names
