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
