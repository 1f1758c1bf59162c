"""Tiny, real models built from configs for the tests (no network).

For each architecture (BERT-like classifier, T5-like seq2seq, GPT-2-like causal LM) a trio is saved:
θ_A (random init, seed 0), θ_A^ft (θ_A trained a few steps on the toy task), θ_B (another random init,
seed 1: a different model of the same architecture) and θ_B^ft (θ_B trained a few steps, for the oracle).
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
import transformers

from gradfix_hf.quickstart.toy import LABELS, NEGATIVE, NEUTRAL, POSITIVE, sentiment_rows, word_tokenizer, write_jsonl

transformers.logging.set_verbosity_error()
WORDS = POSITIVE + NEGATIVE + NEUTRAL[:40] + ["review:", "sentiment:", "negative", "positive"]
PROMPTS = {"bert": "{text}", "t5": "review: {text}", "gpt2": "review: {text} sentiment:"}
OBJECTIVES = {"bert": "sequence-classification", "t5": "seq2seq", "gpt2": "causal-lm"}


def tiny_config(kind: str, tokenizer):
    vocab = len(tokenizer)
    if kind == "bert":
        return transformers.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, max_position_embeddings=64,
                                       pad_token_id=tokenizer.pad_token_id)
    if kind == "t5":
        return transformers.T5Config(vocab_size=vocab, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                     decoder_start_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    return transformers.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                   bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                   pad_token_id=tokenizer.pad_token_id)


def _task_model(kind: str, path_or_config):
    cls = {"bert": transformers.BertForSequenceClassification, "t5": transformers.T5ForConditionalGeneration,
           "gpt2": transformers.GPT2LMHeadModel}[kind]
    if isinstance(path_or_config, (str, Path)):
        kwargs = dict(num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}) if kind == "bert" else {}
        return cls.from_pretrained(path_or_config, **kwargs)
    return cls(path_or_config)


def fine_tune(kind: str, model, tokenizer, rows, steps: int = 8, lr: float = 5e-3, seed: int = 0):
    """A few real optimizer steps on the toy task, with the same per-sample formatting the objectives use."""
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        batch = rows[(step * 8) % len(rows):][:8]
        for row in batch:
            text = PROMPTS[kind].format(text=row["text"])
            word = LABELS[row["label"]]
            if kind == "bert":
                enc = tokenizer(text, return_tensors="pt")
                loss = model(**enc, labels=torch.tensor([row["label"]])).loss
            elif kind == "t5":
                enc = tokenizer(text, return_tensors="pt")
                loss = model(**enc, labels=tokenizer(word, return_tensors="pt").input_ids).loss
            else:
                ids = tokenizer(text).input_ids + tokenizer(" " + word, add_special_tokens=False).input_ids
                loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss
            (loss / len(batch)).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return model


def build_trio(kind: str, root: Path) -> dict[str, Path]:
    """Save source, source_finetuned, target, target_finetuned and train/test jsonl under ``root``."""
    style = {"bert": "bert", "t5": "t5", "gpt2": "gpt2"}[kind]
    tokenizer = word_tokenizer(WORDS, style=style)
    config = tiny_config(kind, tokenizer)
    rows = sentiment_rows(80, seed=3)
    paths = {k: root / k for k in ("source", "source_finetuned", "target", "target_finetuned")}
    paths["train"], paths["test"] = root / "train.jsonl", root / "test.jsonl"
    write_jsonl(paths["train"], rows[:60])
    write_jsonl(paths["test"], rows[60:])
    for seed, pre, ft in ((0, "source", "source_finetuned"), (1, "target", "target_finetuned")):
        torch.manual_seed(seed)
        base = transformers.BertModel(config) if kind == "bert" else _task_model(kind, config)
        base.save_pretrained(paths[pre])
        tokenizer.save_pretrained(paths[pre])
        if kind == "t5" or kind == "gpt2":
            transformers.GenerationConfig.from_model_config(config).save_pretrained(paths[pre])
        tuned = fine_tune(kind, _task_model(kind, paths[pre]), tokenizer, rows[:60], seed=seed)
        tuned.save_pretrained(paths[ft])
        tokenizer.save_pretrained(paths[ft])
    return paths


def recipe_dict(kind: str, trio: dict[str, Path], **overrides) -> dict:
    """A recipe for ``trio`` (plain dict, so tests can tweak it)."""
    recipe = {
        "objective": OBJECTIVES[kind],
        "models": {"source": str(trio["source"]), "source_finetuned": str(trio["source_finetuned"]),
                   "target": str(trio["target"])},
        "data": {"path": str(trio["train"]), "samples_per_class": 3, "seed": 0, "prompt": PROMPTS[kind],
                 **({} if kind == "bert" else {"label_words": dict(LABELS)})},
        "method": {"mask": "gradfix", "alpha": 0.5},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    return recipe


@pytest.fixture(scope="session")
def trios(tmp_path_factory) -> dict:
    """Lazily built trios, one per architecture, shared by the whole session."""
    cache: dict[str, dict[str, Path]] = {}

    def get(kind: str) -> dict[str, Path]:
        if kind not in cache:
            cache[kind] = build_trio(kind, tmp_path_factory.mktemp(f"trio-{kind}"))
        return cache[kind]

    return get
