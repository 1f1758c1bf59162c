"""A checkpoint reader seen through a change of coordinates: what the vocabulary alignment and the weight matching
share.

Why its own module: both read θ_A's (and θ_A^ft's) tensors in θ_B's coordinates as the votes and the merge ask for
them — rows by token string, units by permutation — and everything else about a reader (its keys, dtypes, the
checked and fp32 reads, the role and model that errors and caches name) passes through unchanged. A view
overrides :meth:`ReaderView.transform` (and :meth:`ReaderView.shape` when the shape changes).
"""
from __future__ import annotations

from typing import Iterator

import torch


class ReaderView:
    """``reader`` with :meth:`transform` applied to every tensor it reads."""

    def __init__(self, reader):
        self.reader = reader
        self.role = getattr(reader, "role", None)
        self.model = getattr(reader, "model", None)

    def transform(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def keys(self) -> list[str]:
        return self.reader.keys()

    def __contains__(self, key: str) -> bool:
        return key in self.reader

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.reader.shape(key))

    def dtype(self, key: str) -> torch.dtype:
        return self.reader.dtype(key)

    def get(self, key: str) -> torch.Tensor:
        return self.transform(key, self.reader.get(key))

    def get_checked(self, key: str) -> torch.Tensor:
        return self.transform(key, self.reader.get_checked(key))

    def get_float(self, key: str) -> torch.Tensor:
        return self.transform(key, self.reader.get_float(key))

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for key in self.keys():
            yield key, self.get(key)
