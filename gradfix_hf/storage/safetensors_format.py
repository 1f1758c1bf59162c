"""The safetensors file format at the byte level: dtype names, the header's tensor table, and reading one
tensor's bytes with ``pread``. Shared by the checkpoint reader, the votes file and the sharded writer."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import NamedTuple, Optional

import torch

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
READABLE_DTYPES = {**DTYPES, **{name: getattr(torch, attr) for name, attr in (
    ("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"), ("U16", "uint16"), ("U32", "uint32"),
    ("U64", "uint64")) if hasattr(torch, attr)}}
LITTLE_ENDIAN = sys.byteorder == "little"  # safetensors stores little-endian bytes
_PREAD = hasattr(os, "preadv")
#: torch dtype → safetensors dtype name (what the writer puts in a header)
DTYPE_NAMES = {dtype: name for name, dtype in READABLE_DTYPES.items()}
ALIGN = 64  # bytes: where tensor data starts in the files gradfix writes (and every streamed tensor)


class TensorEntry(NamedTuple):
    """Where one tensor's bytes are: file, safetensors dtype name, shape, absolute byte range."""

    path: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def read_header(path: Path) -> dict[str, TensorEntry]:
    """The tensor table of a safetensors file: an 8-byte little-endian length, then that many bytes of JSON."""
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(length))
    start = 8 + length
    return {key: TensorEntry(path, info["dtype"], tuple(info["shape"]), start + info["data_offsets"][0],
                        start + info["data_offsets"][1])
            for key, info in header.items() if key != "__metadata__"}


def read_metadata(path: Path) -> dict:
    """The ``__metadata__`` of a safetensors file ({} without one); OSError/ValueError for a file that is not one."""
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if not 2 <= length <= 100 * 2**20:
            raise ValueError(f"header length {length}")
        header = json.loads(f.read(length))
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return dict(metadata) if isinstance(metadata, dict) else {}


def encode_header(entries: list[tuple[str, str, list[int], int]], metadata: Optional[dict] = None
                  ) -> tuple[bytes, dict[str, int], int]:
    """The 8-byte length and the JSON header of a file holding ``entries`` (name, safetensors dtype, shape, bytes)
    back to back in that order, padded with spaces so that the data starts ALIGN-byte aligned; also each
    tensor's data offset and the data's total size. The bytes depend only on the arguments (key order kept)."""
    header: dict = {"__metadata__": dict(metadata) if metadata is not None else {"format": "pt"}}
    offsets, offset = {}, 0
    for name, dtype, shape, size in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offsets[name] = offset
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-(8 + len(encoded)) % ALIGN)
    return len(encoded).to_bytes(8, "little") + encoded, offsets, offset


def write_file(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """A safetensors file whose bytes are a function of its content: tensors by name, metadata keys sorted (the
    safetensors library orders metadata by hash, which differs from process to process)."""
    bad = sorted(key for key, value in metadata.items() if not isinstance(key, str) or not isinstance(value, str))
    if bad:
        raise TypeError(f"safetensors metadata must map strings to strings; {bad[0]!r} does not")
    names = sorted(tensors)
    flat = {name: tensors[name].detach().cpu().contiguous().reshape(-1) for name in names}
    entries = [(name, DTYPE_NAMES[flat[name].dtype], list(tensors[name].shape),
                flat[name].numel() * flat[name].element_size()) for name in names]
    header, _, _ = encode_header(entries, {key: metadata[key] for key in sorted(metadata)})
    with open(path, "wb") as out:
        out.write(header)
        for name in names:
            out.write(flat[name].view(torch.uint8).numpy().tobytes() if LITTLE_ENDIAN
                      else flat[name].numpy().byteswap().tobytes())


def check_entry_size(entry: TensorEntry, itemsize: int) -> None:
    """Raise ValueError (with the figures) unless the entry's byte range fits its shape and element size."""
    if math.prod(entry.shape) * itemsize != entry.end - entry.begin:
        raise ValueError(f"{entry.end - entry.begin} bytes for shape {list(entry.shape)} {entry.dtype}")


def pread_tensor(fd: int, entry: TensorEntry, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """The entry's bytes read with ``pread`` into a new tensor (no memory map: nothing stays resident afterwards);
    None where that cannot be done (a big-endian host, no ``preadv``, a dtype without a byte view). Raises
    ValueError for a byte range that does not fit the shape, OSError for a file that ends too soon."""
    if not (LITTLE_ENDIAN and _PREAD):
        return None
    tensor = torch.empty(entry.shape, dtype=dtype)
    check_entry_size(entry, tensor.element_size())
    size = entry.end - entry.begin
    if size == 0:
        return tensor
    try:
        view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
    except (RuntimeError, TypeError):
        return None
    done = 0
    while done < size:
        count = os.preadv(fd, [view[done:]], entry.begin + done)
        if count <= 0:
            raise OSError(f"the file ends before byte {entry.end}")
        done += count
    return tensor
