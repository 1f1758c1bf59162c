"""Held-out scores of SFT data (``objective: sft``): the NLL and perplexity of the loss tokens, and text metrics of
what the model generates.

* ``nll``: the mean negative log-likelihood per loss token over the whole split (token-weighted: every assistant /
  completion token counts once, whatever its row's length); ``perplexity`` = exp(nll). Lower is better: α and
  ``method: auto`` minimise them (:func:`~gradfix_hf.metrics.loading.higher_is_better`).
* text metrics (``rouge``: ROUGE-L, ``exact_match``, any `evaluate` metric with string predictions): greedy
  decoding from each row's prompt (the conversation up to its last assistant turn, rendered with the generation
  prompt; or the prompt of a prompt/completion row), at most ``evaluation.max_new_tokens`` new tokens (default:
  the longest reference's token count), decoded without special tokens and stripped, against the reference (the
  last assistant message, or the completion).

Rows are rendered once per split and kept (``LabelledSamples.encoded``), so an α grid re-renders nothing; a row
whose loss tokens all lie beyond ``data.max_length`` is left out of the NLL (it has none) and still generates.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import GradFixError
from ..objectives import NoLossTokenLeft, Objective, RenderedRow, SFTObjective

GENERATION_LIMIT = 256  # new tokens at most when evaluation.max_new_tokens is not set


def rendered_rows(objective: SFTObjective, samples) -> list[tuple[Optional[dict], RenderedRow]]:
    """(tensors or None for a row without a loss token, rendering) of every row of ``samples``, computed once."""
    if samples.encoded is None:
        out = []
        indices = samples.indices or list(range(len(samples)))
        for row, index in zip(samples.rows, indices):
            where = f"evaluation ({samples.source}) row {index}"
            try:
                rendered = objective.render(row, where)
                out.append((objective.tensors(rendered), rendered))
            except NoLossTokenLeft:
                long_version = objective.render_untruncated(row, where)
                out.append((None, long_version))
        samples.encoded = out
    return samples.encoded


@torch.no_grad()
def loss_scores(objective: SFTObjective, model: torch.nn.Module, samples, *, batch_size: int = 16) -> dict:
    """``{"nll", "perplexity"}`` over the loss tokens of ``samples`` (batched in length order)."""
    examples = sorted((e for e, _ in rendered_rows(objective, samples) if e is not None),
                      key=lambda e: e["input_ids"].shape[1])
    if not examples:
        raise GradFixError(f"evaluation ({samples.source}): no row has a loss token within data.max_length="
                           f"{objective.data.max_length}; raise it.")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in objective.collate(examples[start:start + batch_size]).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        per_token = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=-100,
                                    reduction="none")
        total += float(per_token.sum())
        count += int((targets != -100).sum())
    nll = total / count
    return {"nll": nll, "perplexity": math.exp(min(nll, 700.0))}


@torch.no_grad()
def generated_texts(objective: SFTObjective, model: torch.nn.Module, samples, *,
                    max_new_tokens: Optional[int] = None, batch_size: int = 16) -> tuple[list[str], list[str]]:
    """(generated text, reference) of every row of ``samples`` that has a prompt, in row order. Greedy; rows are
    generated in batches of similar prompt length, left-padded (one row at a time spends most of its time in
    ``generate``'s per-step overhead: 32 headlines of SmolLM2-135M took 39 s, batched 16 at a time a few)."""
    tokenizer = objective.tokenizer
    rendered = [r for _, r in rendered_rows(objective, samples) if r.prompt_ids]
    if not rendered:
        raise GradFixError(f"evaluation ({samples.source}): text metrics need rows with a prompt to generate from "
                           "(conversations or prompt/completion rows; plain text has none).")
    limit = max_new_tokens or min(GENERATION_LIMIT, max(len(tokenizer(r.reference, add_special_tokens=False)
                                                            .input_ids) for r in rendered) + 1)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(rendered)), key=lambda i: len(rendered[i].prompt_ids))
    predictions: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(rendered[i].prompt_ids) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):  # left padding: every prompt ends where generation starts
            prompt = rendered[i].prompt_ids
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            attention[row, width - len(prompt):] = 1
        output = model.generate(input_ids=ids.to(device), attention_mask=attention.to(device), do_sample=False,
                                num_beams=1, max_new_tokens=limit, pad_token_id=pad)
        for row, i in enumerate(chunk):
            predictions[i] = tokenizer.decode(output[row, width:], skip_special_tokens=True).strip()
    return [predictions[i] for i in range(len(rendered))], [r.reference.strip() for r in rendered]


def sft_scores(objective: SFTObjective, model: torch.nn.Module, samples, names: Sequence[str], modules: dict, *,
               max_new_tokens: Optional[int] = None) -> dict[str, float]:
    """Every metric of ``names`` for an SFT objective, in that order (``modules``: the `evaluate` modules)."""
    scores: dict[str, float] = {}
    losses = loss_scores(objective, model, samples) if {"nll", "perplexity"} & set(names) else {}
    texts = generated_texts(objective, model, samples, max_new_tokens=max_new_tokens) if modules else None
    for name in names:
        if name in losses:
            scores[name] = losses[name]
            continue
        result = modules[name].compute(predictions=texts[0], references=texts[1]) or {}
        values = [float(v) for v in result.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if not values:
            raise GradFixError(f"evaluation.metrics: metric {name!r} returned no number ({result!r}).")
        scores[name] = values[0]
    return scores


def is_sft(objective: Optional[Objective]) -> bool:
    return isinstance(objective, SFTObjective)
