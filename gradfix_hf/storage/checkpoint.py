"""Lazy, tensor-by-tensor access to a model's weights (safetensors mapped tensor by tensor; pickle only if allowed).

The merge stage never loads a whole model: it asks a :class:`CheckpointReader` for one tensor at a time.

Each safetensors tensor gets its own private (copy-on-write) memory map of just its byte range, found in the file's
header, and the tensor is a zero-copy view of it: the map, and the pages it made resident, go away when the tensor
is freed. Through ``safe_open`` every page ever read stays in the process's resident set for as long as the file is
open, so a merge that reads every tensor of three checkpoints would end up holding all of them (file-backed RSS);
read this way only the tensors in use are resident, at the cost of page faults on a page cache (no copy). Where a
map cannot be made the bytes are read with ``pread`` into fresh memory; on a big-endian host, or for an unusual
dtype, the tensor comes from ``safe_open`` as before.
"""
from __future__ import annotations

import hashlib
import mmap
import os
from pathlib import Path
from typing import Iterator, Optional

import torch
from safetensors import SafetensorError, safe_open

from ..errors import ModelResolutionError, NonFiniteError
from ..hub import ResolvedModel
from .safetensors_format import (DTYPES, LITTLE_ENDIAN, READABLE_DTYPES, TensorEntry, check_entry_size, pread_tensor,
                                 read_header)


class CheckpointReader:
    """Maps tensor names to the file holding them and reads single tensors on demand."""

    def __init__(self, model: ResolvedModel):
        self.model = model
        self.role = model.role
        self._handles: dict[Path, object] = {}
        self._fds: dict[Path, int] = {}
        self._where: dict[str, Path] = {}
        self._entries: dict[str, TensorEntry] = {}
        self._pickled: dict[str, torch.Tensor] = {}
        for path in model.weight_files:
            if model.weight_format == "safetensors":
                handle = self._open(path)  # validates the header and the file's length
                keys = list(handle.keys())
                try:
                    entries = read_header(path)
                except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
                    raise ModelResolutionError(
                        f"{self.role}: corrupt or truncated checkpoint file {path}: {exc}") from None
                for key in keys:
                    self._where[key] = path
                    if key in entries:
                        self._entries[key] = entries[key]
                del self._handles[path]  # reopened only for a tensor that cannot be read directly
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

    def _fd(self, path: Path) -> int:
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        return self._fds[path]

    def close(self) -> None:
        """Close the files (the reader reopens them if asked for another tensor)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._handles.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 (interpreter shutdown)
            pass

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def shape(self, key: str) -> tuple[int, ...]:
        if key in self._pickled:
            return tuple(self._pickled[key].shape)
        if key in self._entries:
            return self._entries[key].shape
        return tuple(self._open(self._where[key]).get_slice(key).get_shape())

    def dtype(self, key: str) -> torch.dtype:
        if key in self._pickled:
            return self._pickled[key].dtype
        if key in self._entries:
            name = self._entries[key].dtype
        else:
            name = self._open(self._where[key]).get_slice(key).get_dtype()
        return DTYPES.get(name, torch.float32)

    def get(self, key: str) -> torch.Tensor:
        if key in self._pickled:
            return self._pickled[key]
        entry = self._entries.get(key)
        if LITTLE_ENDIAN and entry is not None and entry.dtype in READABLE_DTYPES:
            tensor = self._map(key, entry)
            if tensor is None:
                tensor = self._pread(key, entry)
            if tensor is not None:
                return tensor
        try:
            return self._open(self._where[key]).get_tensor(key)
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelResolutionError(
                f"{self.role}: cannot read tensor {key!r} from {self._where[key]} (corrupt or truncated?): {exc}"
            ) from None

    def _unreadable(self, key: str, entry: TensorEntry, exc: Exception) -> ModelResolutionError:
        return ModelResolutionError(
            f"{self.role}: cannot read tensor {key!r} from {entry.path} (corrupt or truncated?): {exc}")

    def _check_size(self, key: str, entry: TensorEntry, itemsize: int) -> None:
        try:
            check_entry_size(entry, itemsize)
        except ValueError as exc:
            raise self._unreadable(key, entry, exc) from None

    def _map(self, key: str, entry: TensorEntry) -> Optional[torch.Tensor]:
        """A zero-copy view of the tensor's own private map (unmapped when the tensor is freed); None where no map
        can be made (the caller then reads the bytes instead, which also reports a truncated file)."""
        dtype = READABLE_DTYPES[entry.dtype]
        itemsize = torch.empty(0, dtype=dtype).element_size()
        self._check_size(key, entry, itemsize)
        size = entry.end - entry.begin
        if size == 0:
            return torch.empty(entry.shape, dtype=dtype)
        start = entry.begin - entry.begin % mmap.ALLOCATIONGRANULARITY
        if (entry.begin - start) % itemsize:
            return None  # not aligned to its element size: no zero-copy view
        try:
            mapped = mmap.mmap(self._fd(entry.path), entry.end - start, offset=start, access=mmap.ACCESS_COPY)
        except (OSError, ValueError, OverflowError):  # e.g. the file is shorter than its header says
            return None
        try:
            flat = torch.frombuffer(mapped, dtype=torch.uint8, count=size, offset=entry.begin - start)
            return flat.view(dtype).reshape(entry.shape)
        except (RuntimeError, TypeError, ValueError):
            return None

    def _pread(self, key: str, entry: TensorEntry) -> Optional[torch.Tensor]:
        """The tensor's bytes read into a new tensor (no memory map); None if this dtype has no byte view."""
        try:
            return pread_tensor(self._fd(entry.path), entry, READABLE_DTYPES[entry.dtype])
        except (OSError, ValueError) as exc:
            raise self._unreadable(key, entry, exc) from None

    def get_checked(self, key: str) -> torch.Tensor:
        """The tensor as stored, checked for NaN/inf."""
        return self._checked(self.get(key), key)

    def get_float(self, key: str) -> torch.Tensor:
        """The tensor in fp32, checked for NaN/inf."""
        return self._checked(self.get(key).float(), key)

    def _checked(self, tensor: torch.Tensor, key: str) -> torch.Tensor:
        check_finite(tensor, f"{self.role} ({self.model.name}) tensor {key!r}")
        return tensor

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for key in self._where:
            yield key, self.get(key)


#: bytes of each tensor that a fingerprint reads: SAMPLES pieces of SAMPLE_BYTES, spread from its start to its end
SAMPLES, SAMPLE_BYTES = 8, 64


def tensors_fingerprint(reader: CheckpointReader, keys: dict[str, str]) -> str:
    """A short hash of the tensors ``keys`` maps to (name → checkpoint key): each name, dtype and shape, and a fixed
    sample of its bytes (SAMPLES × SAMPLE_BYTES spread over it). Cheap (reads a few pages per tensor), yet two
    models with the same shapes but other weights differ."""
    digest = hashlib.sha256()
    for name in sorted(keys):
        tensor = reader.get(keys[name])
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        raw = tensor.reshape(-1).view(torch.uint8) if tensor.numel() else torch.empty(0, dtype=torch.uint8)
        span = max(raw.numel() - SAMPLE_BYTES, 0)
        for start in sorted({span * i // (SAMPLES - 1) for i in range(SAMPLES)}):
            digest.update(raw[start:start + SAMPLE_BYTES].numpy().tobytes())
    return digest.hexdigest()[:32]


def check_finite(tensor: torch.Tensor, what: str) -> None:
    """Raise :class:`NonFiniteError` if a float tensor holds NaN or ±inf.

    Fast path: one sum (a reduction, no temporary as large as the tensor). A NaN or an infinity makes the sum
    non-finite, so a finite sum proves every value finite; a non-finite sum (which finite values can also give
    by overflowing) is settled by counting with ``isfinite``.
    """
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return
    if bool(torch.isfinite(tensor.sum())):
        return
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
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