"""What every objective provides: a label space, per-sample encoding, a per-sample loss and predictions."""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ..errors import DataError
from ..recipe import DataConfig
from .positions import capped_max_length


@dataclass
class LabelSpace:
    """The task's classes in index order, and how raw dataset labels map onto them."""

    names: list[str]
    lookup: dict  # raw label value (and its str) -> class index

    def index(self, raw: Any, where: str) -> int:
        for key in (raw, str(raw)):
            if key in self.lookup:
                return self.lookup[key]
        raise DataError(f"{where}: label {raw!r} is outside the label set {self.names}.")


class Objective(ABC):
    """A per-sample loss on the target model, plus the matching prediction rule for held-out scores."""

    name: str = ""
    auto_class_name: str = "AutoModel"
    pipeline_task: Optional[str] = None

    def __init__(self, data: DataConfig, tokenizer, labels: LabelSpace):
        self.data = data
        self.tokenizer = tokenizer
        self.labels = labels

    @staticmethod
    @abstractmethod
    def label_space(data: DataConfig, finetuned_config) -> LabelSpace:
        """The classes: from the fine-tune's config (classification) or the recipe's label words."""

    def text_columns(self) -> list[str]:
        """The columns whose values are tokenized as text (checked for null or empty texts before any work)."""
        return [c for c in (self.data.text_column, self.data.text_pair_column) if c]

    def reserved_positions(self) -> int:
        """Tokens an encoded example holds beyond its ``max_length``-truncated text (a causal LM's label word)."""
        return 0

    def fit_positions(self, config, where: str = "models.target") -> Optional[dict]:
        """Tokenize with ``data.max_length`` capped at the positions of θ_B's ``config`` (less
        :meth:`reserved_positions`): ``self.data`` becomes a copy with the capped value (the recipe's own
        ``data`` is untouched). Returns ``{"requested", "used", "why"}`` when it capped, else None."""
        requested = self.data.max_length
        used, why = capped_max_length(requested, config, reserve=self.reserved_positions(), where=where)
        if why is None:
            return None
        self.data = dataclasses.replace(self.data, max_length=used)
        return {"requested": requested, "used": used, "why": why}

    def text_of(self, row: dict) -> str:
        fields = {"text": row[self.data.text_column]}
        if self.data.text_pair_column:
            fields["text_pair"] = row[self.data.text_pair_column]
        return self.data.prompt.format(**fields)

    @abstractmethod
    def encode(self, row: dict, label: int) -> dict:
        """Tensors (batch of one) for the per-sample loss."""

    def loss(self, model: torch.nn.Module, example: dict) -> torch.Tensor:
        """ℓ(θ; x, y) for one sample; the default uses the model's own loss from ``labels``."""
        return model(**example).loss

    supports_batching: bool = True

    def collate(self, examples: list[dict]) -> dict:
        """Right-pad encoded examples into one batch (padding never changes a sample's loss)."""
        pad_id = getattr(self.tokenizer, "pad_token_id", None) or 0
        batch = {}
        for key in examples[0]:
            rows = [e[key][0] for e in examples]
            if rows[0].dim() == 0:  # class labels
                batch[key] = torch.stack(rows)
                continue
            fill = {"input_ids": pad_id, "labels": -100}.get(key, 0)
            batch[key] = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=fill)
        return batch

    def batch_losses(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        """Per-sample losses [B] from one batched forward: the same numbers as :meth:`loss` per sample."""
        return token_losses(model(**{k: v for k, v in batch.items() if k != "labels"},
                                  **self.forward_labels(batch)).logits, batch["labels"], self.shift_labels)

    shift_labels: bool = False

    def forward_labels(self, batch: dict) -> dict:
        return {}

    @abstractmethod
    def predict(self, model: torch.nn.Module, rows: list[dict]) -> list[int]:
        """Predicted class index per row (held-out scores)."""


def token_losses(logits: torch.Tensor, labels: torch.Tensor, shift: bool) -> torch.Tensor:
    """Mean token cross-entropy per sample over its non-ignored (-100) label tokens."""
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    per_token = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
    counts = (labels != -100).sum(1).clamp(min=1)
    return per_token.sum(1) / counts


def verbalised_label_space(data: DataConfig, finetuned_config) -> LabelSpace:
    """Classes of a text-to-text task: the keys of ``label_words`` (or string labels used verbatim)."""
    if not data.label_words:
        raise DataError("data.label_words: a text-to-text objective needs the words of each label, "
                        "e.g. label_words: {0: negative, 1: positive}.")
    names, lookup = [], {}
    for i, (raw, word) in enumerate(data.label_words.items()):
        if not isinstance(word, str) or not word.strip():
            raise DataError(f"data.label_words: label {raw!r} needs a non-empty word, got {word!r}.")
        names.append(word)
        lookup[raw] = i
        lookup[str(raw)] = i
    return LabelSpace(names=names, lookup=lookup)
