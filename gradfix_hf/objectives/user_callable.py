"""A user-supplied per-sample loss: ``loss_fn(model, tokenizer, sample) -> scalar tensor`` (Python API)."""
from __future__ import annotations

import torch

from ..errors import DataError
from .base import LabelSpace, Objective


class CallableObjective(Objective):
    name = "callable"
    pipeline_task = None
    supports_batching = False  # an arbitrary per-sample loss: the exact one-sample engine is used

    def __init__(self, data, tokenizer, labels, loss_fn, auto_class_name: str = "AutoModel"):
        super().__init__(data, tokenizer, labels)
        self.loss_fn = loss_fn
        self.auto_class_name = auto_class_name

    @staticmethod
    def label_space(data, finetuned_config) -> LabelSpace:
        # Labels are the user's business; the distinct raw values still drive per-class sampling.
        return LabelSpace(names=[], lookup={})

    def text_columns(self) -> list[str]:
        return []  # the loss reads the rows as it likes

    def fit_positions(self, config, where: str = "models.target") -> None:
        return None  # the loss tokenizes itself

    def encode(self, row, label):
        return {"row": row}

    def loss(self, model, example):
        value = self.loss_fn(model, self.tokenizer, example["row"])
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise DataError("loss_fn: must return a scalar tensor for one sample.")
        return value.reshape(())

    def predict(self, model, rows):
        raise NotImplementedError("held-out scores need a built-in objective")
