"""Supervised fine-tuning data: chat and instruction fine-tunes of causal LMs (``objective: sft``).

A row of SFT data (a conversation, a prompt and its completion, or plain text, in TRL's column conventions: see
:mod:`.chat`) becomes one sample; its loss is the mean NLL over its loss tokens (the assistant's / the
completion's, or every token with ``data.loss_tokens: all``), the same numbers in one batched forward as one row
at a time. Held-out scores are the NLL and perplexity over the loss tokens of a split, and, for generation
metrics, the text greedy decoding produces from each row's prompt (:mod:`gradfix_hf.metrics.language_modeling`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..errors import DataError, GradFixError
from ..recipe import DataConfig
from .base import LabelSpace, Objective
from .chat import NoLossTokenLeft, RenderedRow, detect_format, render_row
from .text_to_text import causal_lm_losses


class SFTObjective(Objective):
    name = "sft"
    auto_class_name = "AutoModelForCausalLM"
    pipeline_task = "text-generation"
    shift_labels = True
    #: rows vote in length order, so that a micro-batch pads little (the votes are sums: order does not matter)
    sort_by_length = True

    def __init__(self, data: DataConfig, tokenizer, labels: LabelSpace, *, fmt: str,
                 chat_template: Optional[str] = None):
        super().__init__(data, tokenizer, labels)
        self.format = fmt
        self.chat_template = chat_template

    @classmethod
    def for_data(cls, data: DataConfig, tokenizer, columns: list[str], where: str = "data") -> "SFTObjective":
        """The objective for a split with these ``columns``: its format (``data.format``, or from the columns) and
        chat template (``data.chat_template``: a Jinja string, or the path of a file holding one)."""
        fmt = detect_format(columns, data.format, where=where, messages_column=data.messages_column,
                            prompt_column=data.prompt_column, completion_column=data.completion_column,
                            text_column=data.text_column)
        return cls(data, tokenizer, cls.label_space(data, None), fmt=fmt,
                   chat_template=read_chat_template(data.chat_template))

    @staticmethod
    def label_space(data: DataConfig, finetuned_config) -> LabelSpace:
        return LabelSpace(names=["row"], lookup={})  # rows, not classes: every row is of the one "class"

    def text_columns(self) -> list[str]:
        return [self.data.text_column] if self.format == "text" else []  # other shapes: checked row by row

    def data_columns(self) -> list[str]:
        """The columns a row of this format is read from (what its fingerprint records)."""
        d = self.data
        return {"messages": [d.messages_column], "prompt-completion": [d.prompt_column, d.completion_column],
                "text": [d.text_column]}[self.format]

    def render(self, row: dict, where: str = "data", *, max_length: Optional[int] = None) -> RenderedRow:
        """The row's tokens and loss mask, truncated to ``data.max_length`` (or ``max_length``)."""
        d = self.data
        return render_row(row, self.format, self.tokenizer, max_length=max_length or d.max_length,
                          loss_tokens=d.loss_tokens, chat_template=self.chat_template, where=where,
                          columns={"messages": d.messages_column, "prompt": d.prompt_column,
                                   "completion": d.completion_column, "text": d.text_column})

    def render_untruncated(self, row: dict, where: str = "data") -> RenderedRow:
        """The row without ``max_length`` (its prompt and reference, for generation when no loss token is left)."""
        return self.render(row, where, max_length=2**31)

    def encode(self, row: dict, label: int = 0, where: str = "data") -> dict:
        """The row's tensors; a row with no loss token left (too long) gets its first ``max_length`` tokens and no
        target (what embedding a pool of rows needs: :mod:`gradfix_hf.data.selection`; votes skip such rows)."""
        try:
            return self.tensors(self.render(row, where))
        except NoLossTokenLeft:
            full = self.render_untruncated(row, where)
            kept = full.input_ids[:self.data.max_length]
            return self.tensors(RenderedRow(input_ids=kept, loss_mask=[False] * len(kept), prompt_ids=full.prompt_ids,
                                            reference=full.reference, truncated=True))

    @staticmethod
    def tensors(rendered: RenderedRow) -> dict:
        ids = torch.tensor([rendered.input_ids])
        labels = torch.tensor([[t if keep else -100 for t, keep in zip(rendered.input_ids, rendered.loss_mask)]])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}

    def encode_rows(self, rows: list[dict], indices: list[int], source: str) -> tuple[list[dict], list[int], dict]:
        """The vote examples of ``rows`` in length order, the positions (in ``rows``) they come from, and what the
        report says of them: rows truncated to ``data.max_length``, and rows left with no loss token (skipped: a
        row with nothing to predict has no loss). No row left is a DataError."""
        kept, skipped, truncated = [], [], 0
        for position, (row, index) in enumerate(zip(rows, indices)):
            try:
                rendered = self.render(row, f"data ({source}) row {index}")
            except NoLossTokenLeft:
                skipped.append(index)
                continue
            truncated += rendered.truncated
            kept.append((len(rendered.input_ids), position, self.tensors(rendered)))
        if not kept:
            raise DataError(f"data ({source}): every one of the {len(rows)} rows is too long for data.max_length="
                            f"{self.data.max_length}: no loss token is left in any; raise data.max_length.")
        kept.sort(key=lambda item: item[:2])
        notes = {"rows": len(rows), "format": self.format, "loss_tokens": self.data.loss_tokens,
                 "truncated_rows": truncated, "rows_without_loss_token": len(skipped),
                 "skipped_rows": skipped}
        return [example for _, _, example in kept], [position for _, position, _ in kept], notes

    def loss(self, model: torch.nn.Module, example: dict) -> torch.Tensor:
        return self.batch_losses(model, example)[0]

    def batch_losses(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        """Mean NLL of each row's loss tokens, from logits computed only where some row has a loss token."""
        return causal_lm_losses(self, model, batch)

    def predict(self, model, rows):
        raise GradFixError("objective 'sft' has no class predictions: it is scored by NLL, perplexity and the text "
                           "it generates (gradfix_hf/metrics/language_modeling.py).")


def load_named_tokenizer(data: DataConfig, vocab_size: Optional[int], *, token: Optional[str] = None,
                         trust_remote_code: bool = False):
    """``data.tokenizer``: the tokenizer that renders the rows instead of θ_B's (e.g. the instruct release's, for a
    base θ_B without a chat template). Its ids must index θ_B's embeddings: at most ``vocab_size`` tokens."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(data.tokenizer, token=token, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise DataError(f"data.tokenizer: cannot load a tokenizer from {data.tokenizer!r} "
                        f"({type(exc).__name__}: {exc}).") from exc
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise DataError(f"data.tokenizer: {data.tokenizer!r} has {len(tokenizer)} tokens but models.target's "
                        f"embeddings hold {vocab_size}: its ids would index past them.")
    return tokenizer


def read_chat_template(value: Optional[str]) -> Optional[str]:
    """``data.chat_template``: a Jinja template as written, or the path of a file holding one."""
    if value is None:
        return None
    looks_like_path = "{" not in value and "\n" not in value
    if looks_like_path:
        path = Path(value).expanduser()
        if not path.is_file():
            raise DataError(f"data.chat_template: {value!r} is neither a Jinja template nor an existing file.")
        return path.read_text()
    return value
