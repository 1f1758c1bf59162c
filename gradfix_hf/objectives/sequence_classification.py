"""Sequence classification (AutoModelForSequenceClassification): cross-entropy on the fine-tune's head."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import DataError
from .base import LabelSpace, Objective


class SequenceClassificationObjective(Objective):
    name = "sequence-classification"
    auto_class_name = "AutoModelForSequenceClassification"
    pipeline_task = "text-classification"

    @staticmethod
    def label_space(data, finetuned_config) -> LabelSpace:
        id2label = {int(k): str(v) for k, v in (finetuned_config.id2label or {}).items()}
        if not id2label:
            raise DataError("models.source_finetuned: config has no id2label; cannot tell the label set.")
        names = [id2label[i] for i in sorted(id2label)]
        lookup: dict = {}
        for i, name in enumerate(names):
            lookup[i] = i
            lookup[str(i)] = i
            lookup.setdefault(name, i)
        if data.label_words:  # optional mapping raw dataset label -> fine-tune label name
            for raw, name in data.label_words.items():
                if str(name) not in lookup:
                    raise DataError(f"data.label_words: {name!r} is not a label of the fine-tune ({names}).")
                lookup[raw] = lookup[str(raw)] = lookup[str(name)]
        return LabelSpace(names=names, lookup=lookup)

    def _tokenize(self, rows: list[dict]):
        texts = [self.text_of(r) for r in rows]
        pairs = [r[self.data.text_pair_column] for r in rows] if self.data.text_pair_column else None
        return self.tokenizer(texts, pairs, truncation=True, max_length=self.data.max_length,
                              padding=True, return_tensors="pt")

    def encode(self, row: dict, label: int) -> dict:
        example = dict(self._tokenize([row]))
        example["labels"] = torch.tensor([label])
        return example

    def batch_losses(self, model, batch):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits
        if getattr(model.config, "problem_type", None) not in (None, "single_label_classification"):
            raise NotImplementedError("batched losses cover single-label classification only")
        return F.cross_entropy(logits.float(), batch["labels"], reduction="none")

    @torch.no_grad()
    def predict(self, model, rows):
        return model(**self._tokenize(rows)).logits.argmax(-1).tolist()
