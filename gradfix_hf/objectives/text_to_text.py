"""Text-to-text objectives: the label is a word the model must produce.

seq2seq (T5-style): token cross-entropy on the verbalised label's tokens. causal LM: prompt + label word as
one sequence, loss on the completion tokens only. Held-out predictions score each label's words and pick
the most likely (scored choices), which is exact and needs no generation settings.
"""
from __future__ import annotations

import functools
import inspect

import torch

from .base import LabelSpace, Objective, token_losses, verbalised_label_space


class TextToTextObjective(Objective):
    """Shared by seq2seq and causal LM: verbalised labels, scored-choice predictions."""

    @staticmethod
    def label_space(data, finetuned_config) -> LabelSpace:
        return verbalised_label_space(data, finetuned_config)

    @torch.no_grad()
    def predict(self, model, rows):
        predictions = []
        for row in rows:
            losses = [float(self.loss(model, self.encode(row, i))) for i in range(len(self.labels.names))]
            predictions.append(min(range(len(losses)), key=losses.__getitem__))
        return predictions


class Seq2SeqObjective(TextToTextObjective):
    name = "seq2seq"
    auto_class_name = "AutoModelForSeq2SeqLM"
    pipeline_task = "text-generation"  # transformers 5 serves encoder-decoders here too

    def forward_labels(self, batch):
        # the model builds decoder inputs from the labels (shift right, -100 → pad); padding sits at the end
        return {"labels": batch["labels"]}

    def encode(self, row, label):
        enc = self.tokenizer(self.text_of(row), truncation=True, max_length=self.data.max_length, return_tensors="pt")
        target = self.tokenizer(self.labels.names[label], return_tensors="pt").input_ids
        return {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask, "labels": target}


class CausalLMObjective(TextToTextObjective):
    name = "causal-lm"
    auto_class_name = "AutoModelForCausalLM"
    pipeline_task = "text-generation"
    shift_labels = True

    def reserved_positions(self) -> int:
        """The longest label word's tokens (with or without the space put before it), appended after the prompt."""
        words = [w for name in self.labels.names for w in (name, " " + name)]
        return max((len(self.tokenizer(w, add_special_tokens=False).input_ids) for w in words), default=0)

    def encode(self, row, label):
        prompt = self.text_of(row)
        completion = self.labels.names[label]
        if prompt and not prompt[-1].isspace():
            completion = " " + completion
        prompt_ids = self.tokenizer(prompt, truncation=True, max_length=self.data.max_length).input_ids
        completion_ids = self.tokenizer(completion, add_special_tokens=False).input_ids
        input_ids = torch.tensor([prompt_ids + completion_ids])
        labels = torch.tensor([[-100] * len(prompt_ids) + completion_ids])
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}

    def loss(self, model, example):
        return self.batch_losses(model, example)[0]

    def batch_losses(self, model, batch):
        return causal_lm_losses(self, model, batch)


def causal_lm_losses(objective: Objective, model, batch: dict) -> torch.Tensor:
    """Per-sample mean NLL of the tokens a causal LM predicts (``labels`` ≠ -100, position t predicting token t + 1),
    with logits only where some sample has such a token (``logits_to_keep``): the LM head's vocabulary-wide
    product at the other positions is wasted work (with 128 tokens and one label word, 127 of 128 rows) and most of
    the memory of the logits. The scored rows and their losses are the same as with full logits."""
    if not _takes_logits_to_keep(type(model).forward):
        return Objective.batch_losses(objective, model, batch)
    targets = batch["labels"][:, 1:]  # position t predicts token t + 1
    scored = (targets != -100).any(0).nonzero().squeeze(1)
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}, logits_to_keep=scored).logits
    return token_losses(logits, targets[:, scored], shift=False)


@functools.lru_cache(maxsize=None)
def _takes_logits_to_keep(forward) -> bool:
    """Whether a model class's forward accepts ``logits_to_keep`` (asked once per class, not per loss)."""
    return "logits_to_keep" in inspect.signature(forward).parameters
