"""A new release's vocabulary lined up with the old one by token string, so τ_A's embedding rows land on the right
tokens of θ_B.

Why: releases grow their vocabulary (32000 → 32768 tokens, chat tokens added) or renumber it, and a task vector
is indexed by the *old* ids. Row j of θ_B's embedding and output head gets τ_A's row of the same token in θ_A;
tokens θ_A does not have (and padding rows past the tokenizer) keep θ_B's values (τ_A = 0 there); tokens θ_B
dropped are reported. Both uses of a tied embedding take the same rows, so tied weights stay tied. Which tensors
have a row per token is the layout's (``TargetLayout.vocabulary_rows``: the input and output embeddings), never
a list of names. Only the token rows may differ: any other shape difference keeps its error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import CompatibilityError
from .reader_view import ReaderView
from .roles import SOURCE, SOURCE_FT, TARGET, TARGET_FT

#: tokens listed by name in a report (the counts are always complete)
SHOWN = 20


@dataclass(frozen=True)
class VocabularyAlignment:
    """Row j of θ_B's token tensors comes from row ``index[j]`` of θ_A's (-1: θ_B's own row, τ_A = 0)."""

    index: torch.Tensor  # int64, one entry per row of θ_B's token tensors
    source_rows: int
    added: tuple[str, ...]  # θ_B's tokens that θ_A lacks
    dropped: tuple[str, ...]  # θ_A's tokens that θ_B lacks (their rows of τ_A are not carried)
    renumbered: int  # tokens of both whose id differs

    def summary(self) -> dict:
        return {"source_rows": self.source_rows, "target_rows": int(self.index.numel()),
                "aligned_rows": int((self.index >= 0).sum()), "added_tokens": len(self.added),
                "dropped_tokens": len(self.dropped), "renumbered_tokens": self.renumbered,
                "added_examples": list(self.added[:SHOWN]), "dropped_examples": list(self.dropped[:SHOWN])}


def _mismatch(role: str, other: str, vocab: dict, reference: dict, names: dict[str, str]) -> CompatibilityError:
    examples = []
    for token in sorted(set(vocab) | set(reference)):
        if vocab.get(token) != reference.get(token):
            examples.append(f"{token!r} is id {vocab.get(token)} in {role} but {reference.get(token)} in {other}")
        if len(examples) == 3:
            break
    return CompatibilityError(f"{role} ({names[role]}): its tokenizer vocabulary differs from {other}'s "
                              f"({names[other]}; {len(vocab)} vs {len(reference)} tokens; e.g. {'; '.join(examples)})"
                              f": a fine-tune must keep its base's token ids.")


def check_tokenizers(tokenizers: dict[str, object], names: dict[str, str]) -> None:
    """A fine-tune's token ids mean what its base's mean (θ_A^ft and θ_A; θ_B^ft and θ_B)."""
    for tuned, base in ((SOURCE_FT, SOURCE), (TARGET_FT, TARGET)):
        if tokenizers.get(tuned) is not None and tokenizers.get(base) is not None:
            vocab, reference = tokenizers[tuned].get_vocab(), tokenizers[base].get_vocab()
            if vocab != reference:
                raise _mismatch(tuned, base, vocab, reference, names)


def vocab_size(config) -> Optional[int]:
    """The embedding rows a config declares (its text model's, for a multimodal config)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "vocab_size", None)


def vocabulary_alignment(tokenizers: dict[str, object], configs: dict, names: dict[str, str]
                         ) -> Optional[VocabularyAlignment]:
    """θ_B's token rows lined up with θ_A's when their vocabularies differ (None when they agree); a fine-tune
    whose ids differ from its base's, or θ_A and θ_B differing without both tokenizers to line them up, is an
    error."""
    check_tokenizers(tokenizers, names)
    source, target = source_vocabulary(tokenizers), tokenizers.get(TARGET)
    source_rows, target_rows = vocab_size(configs[SOURCE]), vocab_size(configs[TARGET])
    if source is None or target is None or source_rows is None or target_rows is None:
        return None  # nothing to line up with: check_configs compares the row counts
    return align_vocabularies(source, target.get_vocab(), source_rows, target_rows)


def source_vocabulary(tokenizers: dict[str, object]) -> Optional[dict[str, int]]:
    """θ_A's token → id (its own tokenizer, else its fine-tune's), or None when neither ships one."""
    tokenizer = tokenizers.get(SOURCE) or tokenizers.get(SOURCE_FT)
    return None if tokenizer is None else tokenizer.get_vocab()


def align_vocabularies(source: dict[str, int], target: dict[str, int], source_rows: int,
                       target_rows: int) -> Optional[VocabularyAlignment]:
    """θ_B's rows (``target_rows``, its config's vocab_size) in θ_A's (``source_rows``), by token string; None when
    every token keeps its id and the row counts agree (nothing to align)."""
    if source == target and source_rows == target_rows:
        return None
    for vocab, rows, which in ((source, source_rows, "θ_A"), (target, target_rows, "θ_B")):
        beyond = [t for t, i in vocab.items() if not 0 <= i < rows]
        if beyond:
            raise CompatibilityError(f"{which}'s tokenizer has token {beyond[0]!r} at an id outside its "
                                     f"{rows} embedding rows: the tokenizer does not fit the model.")
    index = torch.full((target_rows,), -1, dtype=torch.int64)
    for token, j in target.items():
        i = source.get(token)
        if i is not None:
            index[j] = i
    added = tuple(sorted((t for t in target if t not in source), key=target.__getitem__))
    dropped = tuple(sorted((t for t in source if t not in target), key=source.__getitem__))
    renumbered = sum(1 for t, j in target.items() if t in source and source[t] != j)
    return VocabularyAlignment(index=index, source_rows=source_rows, added=added, dropped=dropped,
                               renumbered=renumbered)


class AlignedRowsReader(ReaderView):
    """A checkpoint reader of θ_A (or θ_A^ft) whose token tensors read in θ_B's rows (see the module docstring);
    every other tensor reads as stored."""

    def __init__(self, reader, alignment: VocabularyAlignment, row_keys: dict[str, str], target_reader):
        super().__init__(reader)
        self.alignment, self.target = alignment, target_reader
        self.row_keys = row_keys  # this reader's key → θ_B's key of the same tensor
        for key in row_keys:
            rows = reader.shape(key)[0] if reader.shape(key) else None
            if rows != alignment.source_rows:
                raise CompatibilityError(f"tensor {key!r}: {rows} rows in {self.role}, but its tokenizer and config "
                                         f"give {alignment.source_rows} token rows.")

    def transform(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        if key not in self.row_keys:
            return tensor
        out = self.target.get(self.row_keys[key]).to(tensor.dtype, copy=True)
        if out.shape[1:] != tensor.shape[1:]:
            raise CompatibilityError(f"tensor {key!r}: shape {list(tensor.shape)} in {self.role} but "
                                     f"{list(out.shape)} in {TARGET}; only the number of token rows may differ.")
        has = self.alignment.index >= 0
        out[has] = tensor[self.alignment.index[has]]
        return out

    def shape(self, key: str) -> tuple[int, ...]:
        shape = super().shape(key)
        return (int(self.alignment.index.numel()), *shape[1:]) if key in self.row_keys else shape
