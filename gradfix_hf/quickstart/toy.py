"""Tiny offline models and toy tasks: the primitives behind ``gradfix quickstart`` (built by :mod:`.build`).

Everything is built from configs on the CPU in seconds, with no network:

* a word-level tokenizer over a made-up vocabulary (``word_tokenizer``),
* a toy sentiment task (positive vs negative words among neutral filler, ``sentiment_rows``) and a toy topic task
  (which half of the neutral vocabulary a sentence's filler comes from, ``topic_rows``),
* unlabelled pre-training corpora with topic structure (``corpus``),
* a few steps of masked-LM pre-training and of classifier fine-tuning.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Iterable, Sequence

import torch

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POSITIVE = ["good", "great", "fine", "superb", "lovely", "bright", "happy", "brilliant", "warm", "charming",
            "clever", "gentle"]
NEGATIVE = ["bad", "awful", "poor", "dull", "ugly", "grim", "sad", "boring", "cold", "clumsy", "weak", "harsh"]
SYLLABLES = ["ka", "lo", "mi", "ren", "to", "sa", "vu", "del", "pi", "nor", "ze", "qua"]
NEUTRAL = sorted({a + b for a in SYLLABLES for b in SYLLABLES})[:120]
LABELS = {0: "negative", 1: "positive"}
#: the topic task: a sentence's filler words come mostly from one half of the neutral vocabulary (by first syllable)
TOPIC_WORDS = (NEUTRAL[:60], NEUTRAL[60:])
TOPIC_LABELS = {0: "topic_a", 1: "topic_b"}


def vocabulary() -> list[str]:
    return SPECIALS + POSITIVE + NEGATIVE + NEUTRAL


def word_tokenizer(words: Sequence[str], *, style: str = "bert"):
    """A fast word-level tokenizer (``PreTrainedTokenizerFast``) over ``words``.

    ``style="bert"`` adds [CLS]/[SEP]; ``"t5"`` appends ``</s>``; ``"gpt2"`` adds nothing. Used by the
    quickstart and by the test-suite fixtures.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = {"bert": SPECIALS, "t5": ["<pad>", "</s>", "<unk>"], "gpt2": ["<|endoftext|>", "<unk>", "<pad>"]}[style]
    vocab = {w: i for i, w in enumerate(dict.fromkeys([*specials, *words]))}
    unk = {"bert": "[UNK]", "t5": "<unk>", "gpt2": "<unk>"}[style]
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if style == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        kwargs = dict(unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    elif style == "t5":
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                           special_tokens=[("</s>", vocab["</s>"])])
        kwargs = dict(unk_token="<unk>", pad_token="<pad>", eos_token="</s>")
    else:
        kwargs = dict(unk_token="<unk>", pad_token="<pad>", eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=64, **kwargs)


def sentiment_rows(count: int, seed: int) -> list[dict]:
    """Toy sentiment sentences: neutral filler plus sentiment words; the majority sentiment is the label."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        label = i % 2
        major, minor = (POSITIVE, NEGATIVE) if label == 1 else (NEGATIVE, POSITIVE)
        words = rng.sample(NEUTRAL, rng.randint(4, 8)) + rng.sample(major, 2) + rng.sample(minor, rng.randint(0, 1))
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    rng.shuffle(rows)
    return rows


def topic_rows(count: int, seed: int) -> list[dict]:
    """Toy topic sentences: 3-5 words of the label's topic, 0-2 of the other one and 1-2 sentiment words (noise:
    the sentiment task's features do not answer this one)."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        label = i % 2
        major, minor = TOPIC_WORDS[label], TOPIC_WORDS[1 - label]
        words = (rng.sample(major, rng.randint(3, 5)) + rng.sample(minor, rng.randint(0, 2))
                 + rng.sample(POSITIVE + NEGATIVE, rng.randint(1, 2)))
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    rng.shuffle(rows)
    return rows


def corpus(count: int, seed: int, topic_size: int) -> list[str]:
    """Unlabelled pre-training sentences with topic structure (words co-occur within a topic)."""
    rng = random.Random(seed)
    words = NEUTRAL + POSITIVE + NEGATIVE
    shuffled = words[:]
    rng.shuffle(shuffled)
    topics = [shuffled[i:i + topic_size] for i in range(0, len(shuffled), topic_size)]
    return [" ".join(rng.choices(rng.choice(topics), k=rng.randint(6, 12))) for _ in range(count)]


def _batches(items: Sequence, batch_size: int, steps: int, seed: int) -> Iterable[list]:
    rng = random.Random(seed)
    for _ in range(steps):
        yield rng.sample(list(items), batch_size)


def train_masked_lm(model, tokenizer, sentences: Sequence[str], *, steps: int, lr: float, seed: int,
                    batch_size: int = 32) -> None:
    """A few steps of BERT-style masked-LM training (15% of tokens masked)."""
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for batch in _batches(sentences, batch_size, steps, seed):
        enc = tokenizer(batch, padding=True, return_tensors="pt")
        labels = enc.input_ids.clone()
        special = enc.input_ids < len(SPECIALS)
        masked = (torch.rand(labels.shape) < 0.15) & ~special
        labels[~masked] = -100
        enc["input_ids"] = enc.input_ids.masked_fill(masked, tokenizer.mask_token_id)
        loss = model(**enc, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def train_classifier(model, tokenizer, rows: Sequence[dict], *, steps: int, lr: float, seed: int,
                     batch_size: int = 16) -> None:
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for batch in _batches(rows, batch_size, steps, seed):
        enc = tokenizer([r["text"] for r in batch], padding=True, return_tensors="pt")
        loss = model(**enc, labels=torch.tensor([r["label"] for r in batch])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
