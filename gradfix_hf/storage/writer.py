"""Sharded safetensors output written tensor by tensor, in the layout ``from_pretrained`` expects.

Tensors are streamed to disk as they come instead of being held until their shard is full, so the writer adds
no shard-sized buffer to the merge's peak memory (``max_shard_size`` is 5 GB by default). A safetensors file
starts with a header that lists every tensor's byte range, so each shard's tensor bytes go to a temporary data
file first; when the shard is full its header is written and the data appended with ``copy_file_range`` (a copy
inside the kernel, no user memory). The header is padded with spaces (as the format allows) so that tensor data
starts 64-byte aligned, and tensors whose byte size is not a multiple of 64 (rare, small: e.g. a 2-class bias) are
held and written last, largest element size first: every streamed tensor starts on a 64-byte boundary (memory-mapped
loads see the same alignment whatever the sharding, so matmul kernels take the same path) and every tensor at a
multiple of its element size. On a big-endian host the writer falls back to holding a shard and writing it with
``safetensors.torch.save_file``.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from safetensors.torch import save_file

from ..recipe import parse_size
from .safetensors_format import ALIGN, DTYPE_NAMES, LITTLE_ENDIAN, encode_header



def _raw_bytes(tensor: torch.Tensor) -> Optional[memoryview]:
    """The bytes of a contiguous CPU tensor, without a copy (None where the dtype has no byte view)."""
    try:
        return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
    except (RuntimeError, TypeError):
        return None


def _append_file(source: Path, destination) -> None:
    """Append the whole of ``source`` to the open binary file ``destination``."""
    destination.flush()
    with open(source, "rb") as src:
        remaining = os.fstat(src.fileno()).st_size
        try:
            while remaining > 0:
                copied = os.copy_file_range(src.fileno(), destination.fileno(), remaining)
                if copied <= 0:
                    break
                remaining -= copied
        except (AttributeError, OSError):  # no copy_file_range (old kernel, other OS, some file systems)
            pass
        if remaining > 0:
            src.seek(os.fstat(src.fileno()).st_size - remaining)
            destination.seek(0, os.SEEK_END)
            shutil.copyfileobj(src, destination, 16 * 2 ** 20)


def _held_order(items: list, name_and_dtype) -> list:
    """Tensors whose size is not a multiple of ALIGN go after the streamed ones, largest element size first (then
    by name): each then starts at a multiple of its element size."""
    def key(item):
        name, dtype = name_and_dtype(item)
        return -torch.empty(0, dtype=dtype).element_size(), name
    return sorted(items, key=key)


class ShardedSafetensorsWriter:
    """Writes tensors into shards of at most ``max_shard_size`` bytes; ``close()`` names shards and writes the index.

    With ``plan`` (every tensor's name, dtype and shape, in the order they will be added, as the streaming merge
    knows them before it computes anything) the shards and their headers are laid out upfront — the same layout
    as without a plan — and each tensor is written straight to its place (``pwrite``): no temporary data file and
    no second copy of the data."""

    def __init__(self, folder: Union[str, Path], max_shard_size: Union[int, str] = "5GB",
                 plan: Optional[Sequence[tuple[str, torch.dtype, Sequence[int]]]] = None):
        self.folder = Path(folder)
        self.max_bytes = parse_size(max_shard_size)
        self._planned: Optional[dict[str, tuple]] = None  # name -> (fd, offset, dtype, shape)
        self._shards: list[tuple[Path, list[str]]] = []
        self.total_size = 0
        self._buffered = 0  # bytes of the current shard (streamed and held)
        self._streamed: dict[str, tuple[str, list[int], int, int]] = {}  # name -> dtype, shape, data offsets
        self._held: dict[str, torch.Tensor] = {}
        self._data = None  # the current shard's temporary data file (open for appending)
        self._data_path: Optional[Path] = None
        self._data_size = 0
        if plan is not None and LITTLE_ENDIAN and hasattr(os, "pwrite"):
            self._lay_out(plan)

    def _lay_out(self, plan: Sequence[tuple[str, torch.dtype, Sequence[int]]]) -> None:
        """Shard boundaries and headers of ``plan`` by the rules of :meth:`add` (streamed tensors in order, then
        the held ones), each shard file created with its header; ``add`` then only writes bytes."""
        shards: list[list[tuple[str, torch.dtype, list[int], int]]] = [[]]
        used = 0
        for name, dtype, shape in plan:
            if dtype not in DTYPE_NAMES:
                raise ValueError(f"tensor {name!r}: dtype {dtype} cannot be stored in safetensors")
            size = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
            if shards[-1] and used + size > self.max_bytes:
                shards.append([])
                used = 0
            shards[-1].append((name, dtype, list(shape), size))
            used += size
            self.total_size += size
        self._planned = {}
        for i, members in enumerate(shards):
            streamed = [m for m in members if m[3] % ALIGN == 0]
            held = _held_order([m for m in members if m[3] % ALIGN], lambda m: (m[0], m[1]))
            header, offsets, data_size = encode_header([(n, DTYPE_NAMES[d], shape, size) for n, d, shape, size in
                                                         streamed + held])
            path = self.folder / f".shard-{i:05d}.tmp"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
            os.write(fd, header)
            os.ftruncate(fd, len(header) + data_size)
            for name, dtype, shape, _ in members:
                self._planned[name] = (fd, len(header) + offsets[name], dtype, shape)
            self._shards.append((path, [m[0] for m in members]))
        self._pending = set(self._planned)

    @property
    def planned(self) -> bool:
        """True when tensors go straight to their place (then they may be added in any order)."""
        return self._planned is not None

    def _write_planned(self, name: str, tensor: torch.Tensor) -> None:
        if name not in self._planned:
            raise ValueError(f"tensor {name!r} is not in the writer's plan")
        if name not in self._pending:
            raise ValueError(f"tensor {name!r} was already written")
        fd, offset, dtype, shape = self._planned[name]
        if tensor.dtype != dtype or list(tensor.shape) != list(shape):
            raise ValueError(f"tensor {name!r}: {tensor.dtype} {list(tensor.shape)} but the plan says {dtype} "
                             f"{list(shape)}")
        raw = _raw_bytes(tensor.detach().cpu().contiguous())
        done = 0
        while done < len(raw):
            done += os.pwrite(fd, raw[done:], offset + done)
        self._pending.discard(name)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if self._planned is not None:
            return self._write_planned(name, tensor)
        size = tensor.numel() * tensor.element_size()
        if (self._streamed or self._held) and self._buffered + size > self.max_bytes:
            self._flush()
        tensor = tensor.detach().cpu().contiguous()
        if name in self._streamed or name in self._held:
            raise ValueError(f"tensor {name!r} was already written")
        raw = _raw_bytes(tensor) if LITTLE_ENDIAN else None
        if LITTLE_ENDIAN and (tensor.dtype not in DTYPE_NAMES or raw is None):
            raise ValueError(f"tensor {name!r}: dtype {tensor.dtype} cannot be stored in safetensors")
        if LITTLE_ENDIAN and size % ALIGN == 0:
            if self._data is None:
                self._data_path = self.folder / f".shard-{len(self._shards):05d}.data.tmp"
                self._data = open(self._data_path, "wb")
                self._data_size = 0
            self._data.write(raw)
            start = self._data_size
            self._streamed[name] = (DTYPE_NAMES[tensor.dtype], list(tensor.shape), start, start + size)
            self._data_size += size
        else:
            self._held[name] = tensor
        self._buffered += size
        self.total_size += size

    def _flush(self) -> None:
        path = self.folder / f".shard-{len(self._shards):05d}.tmp"
        names = list(self._streamed) + list(self._held)
        if not LITTLE_ENDIAN:
            save_file(self._held, str(path), metadata={"format": "pt"})
        else:
            self._write_shard(path)
        self._shards.append((path, names))
        self._streamed, self._held, self._buffered = {}, {}, 0

    def _write_shard(self, path: Path) -> None:
        if self._data is not None:
            self._data.close()
        streamed = [(name, dtype, shape, end - begin) for name, (dtype, shape, begin, end) in self._streamed.items()]
        held = _held_order(list(self._held.items()), lambda item: (item[0], item[1].dtype))
        held_entries = [(name, DTYPE_NAMES[t.dtype], list(t.shape), t.numel() * t.element_size()) for name, t in held]
        header, _, _ = encode_header(streamed + held_entries)
        with open(path, "wb") as out:
            out.write(header)
            if self._data_path is not None:
                _append_file(self._data_path, out)
            for _, tensor in held:
                out.write(_raw_bytes(tensor))
        if self._data_path is not None:
            self._data_path.unlink()
        self._data, self._data_path, self._data_size = None, None, 0

    def close(self) -> list[str]:
        if self._planned is not None:
            for fd in {entry[0] for entry in self._planned.values()}:
                os.close(fd)
            if self._pending:
                raise ValueError(f"{len(self._pending)} planned tensor(s) were never written, e.g. "
                                 f"{sorted(self._pending)[:3]}")
            self._planned = {}
        elif self._streamed or self._held or not self._shards:
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
