"""One SFT data row as token ids and a per-token loss mask, in the column conventions of TRL's SFT data.

Three row shapes (:data:`FORMATS`), as TRL's ``SFTTrainer`` reads them, so existing SFT sets work unchanged:

- ``messages``: a list of ``{"role", "content"}`` messages (roles system, user, assistant, tool), rendered with
  the tokenizer's chat template or ``data.chat_template``;
- ``prompt-completion``: ``prompt`` and ``completion`` both strings, or both lists of messages (the prompt up to
  the assistant's turn, the completion the assistant message(s));
- ``text``: language modelling on every token.

With ``loss_tokens="completion"`` the loss covers the assistant turns of a conversation (every one of them; only
those of the completion for prompt-completion) including the end-of-turn token(s) that close each one
(``<|im_end|>``, ``<|eot_id|>``...), but not the next turn's header. ``loss_mask[t]`` marks token ``t`` as a target:
a causal LM predicts it from the logits at ``t - 1``. Two ways to find the assistant tokens:

- the template has ``{% generation %}`` markers: transformers' ``return_assistant_tokens_mask`` (what TRL's
  ``assistant_only_loss=True`` trains on), so the mask is the one the template's author declared;
- no markers (most templates: Llama 3, ChatML/Qwen2, Zephyr...): for each assistant turn *i* the conversation is
  rendered up to it with ``add_generation_prompt=True`` and up to its end; both strings must be prefixes of the
  whole conversation (else :class:`DataError`: the template is not prefix-preserving) and the characters between
  them are that turn. The whole conversation is tokenized once; its offsets turn the character spans into token
  spans, and a token that straddles a boundary is an error (the prompt and the answer cannot be told apart).

String prompt-completion and text follow TRL's non-conversational path: the EOS token is appended to the
completion (the text) unless it already ends with it; the completion starts where the tokens of the prompt alone
and those of prompt + completion diverge (TRL's ``common_prefix_length``), so a token merging across the seam
belongs to the completion.

Truncation keeps the first ``max_length`` tokens (TRL's default too) and sets ``RenderedRow.truncated``.

TRL is not used: its assistant masks for conversations need ``{% generation %}`` markers (``assistant_only_loss``
with any other template gives an empty mask, and ``get_training_chat_template`` patches only the exact templates
it ships, raising for the rest); its ``apply_chat_template`` for prompt-completion cuts the rendered strings at
their common character prefix, which hides a template that is not prefix-preserving instead of reporting it; and
the rest (``is_conversational``, ``common_prefix_length``) are a few lines each, not worth a dependency.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from ..errors import DataError, RecipeError, did_you_mean
from ..recipe import LOSS_TOKENS
from ..recipe import SFT_FORMATS as FORMATS

ROLES = ("system", "user", "assistant", "tool")
COLUMN_KEYS = ("messages", "prompt", "completion", "text")
_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")
_NOT_PREFIX = ("the chat template does not render the conversation up to assistant turn {turn} as a prefix of the "
               "whole conversation (it is not prefix-preserving: some templates strip reasoning from earlier "
               "assistant turns, or move the system prompt into the last user message), so that turn's tokens cannot "
               "be found; give data.chat_template a prefix-preserving template, or one with {{% generation %}} "
               "markers around the assistant's output")


class NoLossTokenLeft(DataError):
    """A row whose loss tokens all lie beyond ``max_length``: it cannot vote (a caller may count and skip it)."""


@dataclass
class RenderedRow:
    """One row ready for the loss: ``input_ids`` and ``loss_mask`` (same length, at most ``max_length`` tokens;
    ``loss_mask[t]``: token ``t`` is a target), ``prompt_ids`` to generate from (not truncated: the conversation up
    to its last assistant turn with the generation prompt, the prompt of prompt-completion, ``[]`` for text), and
    the ``reference`` text generation should produce (that assistant turn's content, the completion, ``""``)."""
    input_ids: list[int]
    loss_mask: list[bool]
    prompt_ids: list[int]
    reference: str
    truncated: bool


def format_columns(*, messages_column: str = "messages", prompt_column: str = "prompt",
                   completion_column: str = "completion", text_column: str = "text") -> dict[str, tuple[str, ...]]:
    """Each row shape and the columns it reads."""
    return {"messages": (messages_column,), "prompt-completion": (prompt_column, completion_column),
            "text": (text_column,)}


def matching_formats(columns: Sequence[str], **names: str) -> list[str]:
    """The row shapes whose columns are all among ``columns`` (``names``: the column names of
    :func:`format_columns`)."""
    present = set(columns)
    return [fmt for fmt, cols in format_columns(**names).items() if all(c in present for c in cols)]


def detect_format(columns: Sequence[str], requested: Optional[str], *, where: str, messages_column: str = "messages",
                  prompt_column: str = "prompt", completion_column: str = "completion",
                  text_column: str = "text") -> str:
    """The row shape of a data set with these ``columns``: ``requested`` when given (its columns must exist), else
    (``None`` or ``"auto"``) the one shape whose columns are present."""
    present = set(columns)
    names = dict(messages_column=messages_column, prompt_column=prompt_column, completion_column=completion_column,
                 text_column=text_column)
    needs = format_columns(**names)
    if requested not in (None, "auto"):
        if requested not in needs:
            raise DataError(f"{where}: data.format {requested!r} is unknown; use 'auto' or one of "
                            f"{', '.join(FORMATS)}.{did_you_mean(requested, FORMATS)}")
        missing = [c for c in needs[requested] if c not in present]
        if missing:
            raise DataError(f"{where}: data.format is {requested!r} but the data has no column "
                            f"{', '.join(map(repr, missing))}; its columns: {sorted(present)}")
        return requested
    found = matching_formats(columns, **names)
    if len(found) == 1:
        return found[0]
    if found:
        shapes = "; ".join(f"{fmt} ({', '.join(map(repr, needs[fmt]))})" for fmt in found)
        raise DataError(f"{where}: the columns fit more than one SFT format: {shapes}; set data.format to the one "
                        f"to train on ({' or '.join(map(repr, found))})")
    hint = ""
    if (prompt_column in present) != (completion_column in present):
        has, lacks = (prompt_column, completion_column) if prompt_column in present else (completion_column,
                                                                                          prompt_column)
        hint = f" (there is {has!r} without {lacks!r})"
    raise DataError(f"{where}: no SFT columns{hint}: expected a {messages_column!r} column (a list of role/content "
                    f"messages), {prompt_column!r} and {completion_column!r} columns, or a {text_column!r} column; "
                    f"the data has: {sorted(present)}")


def render_row(row: Mapping, fmt: str, tokenizer, *, max_length: int, loss_tokens: str = "completion",
               chat_template: Optional[str] = None, where: str = "data",
               columns: Optional[Mapping[str, str]] = None) -> RenderedRow:
    """Token ids and loss mask of one row of format ``fmt`` (see :func:`detect_format`).

    ``loss_tokens``: ``"completion"`` (assistant turns / the completion) or ``"all"`` (every token; the text format
    always uses every token). Truncation keeps the first ``max_length`` tokens; a row whose loss tokens all lie
    beyond them is a :class:`DataError`. ``columns`` renames the columns (keys: messages, prompt, completion,
    text). ``where`` (e.g. ``"data (train.jsonl) row 12"``) starts every error message.
    """
    if fmt not in FORMATS:
        raise RecipeError(f"unknown SFT format {fmt!r}; expected one of {', '.join(FORMATS)}"
                          f"{did_you_mean(fmt, FORMATS)}")
    if loss_tokens not in LOSS_TOKENS:
        raise RecipeError(f"loss_tokens must be one of {', '.join(LOSS_TOKENS)}, not {loss_tokens!r}"
                          f"{did_you_mean(loss_tokens, LOSS_TOKENS)}")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise RecipeError(f"max_length must be a positive integer, not {max_length!r}")
    names = dict(zip(COLUMN_KEYS, COLUMN_KEYS))
    for key, name in (columns or {}).items():
        if key not in names:
            raise RecipeError(f"unknown column key {key!r}; expected one of {', '.join(COLUMN_KEYS)}"
                              f"{did_you_mean(key, COLUMN_KEYS)}")
        names[key] = name
    completion_only = loss_tokens == "completion" and fmt != "text"
    if fmt == "text":
        ids, mask, prompt_ids, reference = _text(_cell(row, names["text"], where), tokenizer, where, names["text"])
    elif fmt == "messages":
        messages = _messages(_cell(row, names["messages"], where), where, names["messages"])
        chat = _Chat(tokenizer, chat_template, messages, where)
        ids, mask, prompt_ids, reference = chat.encode(0, completion_only)
    else:
        ids, mask, prompt_ids, reference = _prompt_completion(row, names, tokenizer, chat_template, where,
                                                              completion_only)
    if not completion_only:
        mask = [True] * len(ids)
    if completion_only and not any(mask):
        raise DataError(f"{where}: the row has no completion token to put the loss on")
    truncated = len(ids) > max_length
    if truncated and not any(mask[:max_length]):
        first = mask.index(True)
        raise NoLossTokenLeft(f"{where}: the row is too long for max_length={max_length}: its first loss token is at "
                        f"position {first} of {len(ids)}, so keeping the first {max_length} tokens leaves no loss "
                        f"token; raise data.max_length to at least {first + 1} ({len(ids)} keeps the whole row)")
    return RenderedRow(input_ids=list(ids[:max_length]), loss_mask=list(mask[:max_length]),
                       prompt_ids=list(prompt_ids), reference=reference, truncated=truncated)


def _cell(row: Mapping, column: str, where: str) -> Any:
    if column not in row:
        raise DataError(f"{where}: the row has no column {column!r}; its columns: {sorted(row)}")
    value = row[column]
    if value is None:
        raise DataError(f"{where}: column {column!r} is null")
    return value


def _with_eos(text: str, tokenizer) -> str:
    """TRL's ``add_eos``: the completion / text ends with the EOS token, so the model learns to stop."""
    eos = getattr(tokenizer, "eos_token", None)
    return text + eos if eos and not text.endswith(eos) else text


def _text(text: Any, tokenizer, where: str, column: str):
    if not isinstance(text, str):
        raise DataError(f"{where}: column {column!r} must be a string, not {type(text).__name__}")
    if not text.strip():
        raise DataError(f"{where}: column {column!r} is empty")
    ids = list(tokenizer(_with_eos(text, tokenizer))["input_ids"])
    return ids, [True] * len(ids), [], ""


def _prompt_completion(row, names, tokenizer, chat_template, where, completion_only: bool):
    pcol, ccol = names["prompt"], names["completion"]
    prompt, completion = _cell(row, pcol, where), _cell(row, ccol, where)
    for column, value in ((pcol, prompt), (ccol, completion)):
        if not isinstance(value, (str, list, tuple)):
            raise DataError(f"{where}: column {column!r} must be a string or a list of messages, "
                            f"not {type(value).__name__}")
    if isinstance(prompt, str) != isinstance(completion, str):
        kinds = {c: "a string" if isinstance(v, str) else "a list of messages" for c, v in
                 ((pcol, prompt), (ccol, completion))}
        raise DataError(f"{where}: {pcol!r} is {kinds[pcol]} but {ccol!r} is {kinds[ccol]}: both must be strings "
                        "or both lists of messages")
    if not completion or (isinstance(completion, str) and not completion.strip()):
        raise DataError(f"{where}: column {ccol!r} is empty")
    if isinstance(prompt, str):
        prompt_ids = list(tokenizer(prompt)["input_ids"])
        ids = list(tokenizer(prompt + _with_eos(completion, tokenizer))["input_ids"])
        start = _common_prefix_length(prompt_ids, ids)
        return ids, [False] * start + [True] * (len(ids) - start), prompt_ids, completion
    if not prompt:
        raise DataError(f"{where}: column {pcol!r} is an empty conversation")
    prompt_messages = _messages(prompt, where, pcol)
    messages = prompt_messages + _messages(completion, where, ccol)
    chat = _Chat(tokenizer, chat_template, messages, where)
    return chat.encode(len(prompt_messages), completion_only, prompt_only=True)


def _common_prefix_length(ids: Sequence[int], other: Sequence[int]) -> int:
    length = 0
    for a, b in zip(ids, other):
        if a != b:
            break
        length += 1
    return length


def _messages(value: Any, where: str, column: str) -> list[dict]:
    """The messages of a cell, checked: a non-empty list of {"role", "content"} mappings with known roles and
    string contents (other keys, e.g. ``name`` or ``tool_calls``, go to the template as they are)."""
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{where}: column {column!r} must be a list of messages, not {type(value).__name__}")
    if not value:
        raise DataError(f"{where}: column {column!r} is an empty conversation")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            hint = (" (ShareGPT-style from/value messages: convert them to role/content)"
                    if isinstance(message, Mapping) and "from" in message else "")
            raise DataError(f"{where}: message {i} in {column!r} is not a {{'role', 'content'}} mapping: "
                            f"{_short(message)}{hint}")
        if message["role"] not in ROLES:
            raise DataError(f"{where}: message {i} in {column!r} has unknown role {message['role']!r}; expected one "
                            f"of {', '.join(ROLES)}.{did_you_mean(message['role'], ROLES)}")
        if not isinstance(message["content"], str):
            raise DataError(f"{where}: message {i} in {column!r} ({message['role']}) has content of type "
                            f"{type(message['content']).__name__}, not a string")
        messages.append(dict(message))
    return messages


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _Chat:
    """One conversation and a tokenizer's chat template; renders are cached by (message count, generation)."""

    def __init__(self, tokenizer, chat_template: Optional[str], messages: list[dict], where: str):
        if chat_template is None and getattr(tokenizer, "chat_template", None) is None:
            raise DataError(f"{where}: the rows are conversations but the tokenizer has no chat template; give one "
                            "(a Jinja string) in data.chat_template")
        try:
            self.template = tokenizer.get_chat_template(chat_template)
        except ValueError as exc:  # several named templates and none chosen
            raise DataError(f"{where}: {exc} (data.chat_template)") from None
        self.tokenizer, self.messages, self.where = tokenizer, messages, where
        self._renders: dict[tuple[int, bool], str] = {}

    def render(self, count: int, generation: bool) -> str:
        """The first ``count`` messages as text, with the generation prompt when ``generation``."""
        key = (count, generation)
        if key not in self._renders:
            from jinja2.exceptions import TemplateError

            try:
                self._renders[key] = self.tokenizer.apply_chat_template(
                    self.messages[:count], chat_template=self.template, tokenize=False,
                    add_generation_prompt=generation)
            except TemplateError as exc:
                raise DataError(f"{self.where}: the chat template rejects this conversation: {exc}") from None
        return self._renders[key]

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode(self, first_loss: int, completion_only: bool, prompt_only: bool = False):
        """(ids, mask, prompt_ids, reference); the mask covers the assistant turns from message ``first_loss`` on.
        ``prompt_only``: generation starts after the first ``first_loss`` messages (the prompt of
        prompt-completion), else before the last assistant turn."""
        assistant = [i for i, m in enumerate(self.messages) if m["role"] == "assistant" and i >= first_loss]
        if completion_only and not assistant:
            part = "the completion" if prompt_only else "the conversation"
            raise DataError(f"{self.where}: {part} has no assistant turn to put the loss on (roles: "
                            f"{[m['role'] for m in self.messages]})")
        full = self.render(len(self.messages), False)
        generate_at = first_loss if prompt_only else (assistant[-1] if assistant else len(self.messages))
        reference = self.messages[assistant[0] if prompt_only else assistant[-1]]["content"] if assistant else ""
        prompt_ids = self.tokenize(self.render(generate_at, True)) if generate_at else []
        if not completion_only:
            return self.tokenize(full), [], prompt_ids, reference
        if _MARKER.search(self.template) and getattr(self.tokenizer, "is_fast", False):
            ids, mask = self._marked(full, first_loss)
        else:
            ids, mask = self._spans(full, [self._turn_span(i, full) for i in assistant])
        return ids, mask, prompt_ids, reference

    def _prefix_end(self, count: int, generation: bool, full: str, turn: int) -> int:
        text = self.render(count, generation)
        if not full.startswith(text):
            raise DataError(f"{self.where}: " + _NOT_PREFIX.format(turn=turn))
        return len(text)

    def _turn_span(self, turn: int, full: str) -> tuple[int, int]:
        """Characters of assistant message ``turn`` in ``full``: from the end of the conversation before it (with
        the generation prompt) to the end of the conversation that ends with it."""
        if turn == 0:
            raise DataError(f"{self.where}: the conversation starts with an assistant turn: without a message "
                            "before it, its start cannot be found (templates cannot render an empty conversation); "
                            "start with a system or user message, or use a template with {% generation %} markers")
        start = self._prefix_end(turn, True, full, turn)
        end = self._prefix_end(turn + 1, False, full, turn)
        if end < start:
            raise DataError(f"{self.where}: " + _NOT_PREFIX.format(turn=turn))
        return start, end

    def _spans(self, full: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[bool]]:
        """Token ids of ``full`` and the mask of the tokens inside the character ``spans``."""
        if getattr(self.tokenizer, "is_fast", False):
            enc = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
            ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
            index = lambda c: self._offset_index(offsets, c, full)  # noqa: E731
        else:  # no offsets: the tokens of each prefix must be the first tokens of the whole
            ids = self.tokenize(full)
            index = lambda c: self._prefix_index(ids, c, full)  # noqa: E731
        mask = [False] * len(ids)
        for start, end in spans:
            a, b = index(start), index(end)
            mask[a:b] = [True] * (b - a)
        return ids, mask

    def _offset_index(self, offsets: list, char: int, full: str) -> int:
        """The first token at or after ``char``; the token before it must end by ``char``."""
        index = next((k for k, (start, _) in enumerate(offsets) if start >= char), len(offsets))
        if index and offsets[index - 1][1] > char:
            self._misaligned(char, full)
        return index

    def _prefix_index(self, ids: list[int], char: int, full: str) -> int:
        prefix = self.tokenize(full[:char])
        if ids[:len(prefix)] != prefix:
            self._misaligned(char, full)
        return len(prefix)

    def _misaligned(self, char: int, full: str):
        raise DataError(f"{self.where}: the chat template's text and the tokenizer's tokens do not line up: a token "
                        f"spans the boundary of an assistant turn at {full[max(0, char - 30):char]!r} | "
                        f"{full[char:char + 30]!r}, so the assistant's tokens cannot be separated from the rest")

    def _marked(self, full: str, first_loss: int) -> tuple[list[int], list[bool]]:
        """The template's ``{% generation %}`` mask, from message ``first_loss`` on."""
        from jinja2.exceptions import TemplateError

        try:
            out = self.tokenizer.apply_chat_template(self.messages, chat_template=self.template, tokenize=True,
                                                     return_dict=True, return_assistant_tokens_mask=True)
        except TemplateError as exc:
            raise DataError(f"{self.where}: the chat template rejects this conversation: {exc}") from None
        ids, mask = list(out["input_ids"]), [bool(m) for m in out["assistant_masks"]]
        if first_loss:  # prompt-completion: not the assistant turns of the prompt
            start = self._prefix_end(first_loss, True, full, first_loss)
            offsets = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            cut = self._offset_index(list(offsets), start, full)
            mask[:cut] = [False] * cut
        if not any(mask):
            raise DataError(f"{self.where}: the chat template's {{% generation %}} markers mark no token of the "
                            "assistant turns to train on; fix the markers in data.chat_template")
        return ids, mask
