"""The trainings an experiment needs, each on a fixed CPU budget (steps), seeded and cached on disk:

* masked-LM pre-training, continued from θ_A (a later release trained longer on another corpus) or from a
  random initialisation (an independently pre-trained model of the same architecture);
* sequence-classification fine-tuning: θ_A^ft on the task's training split, and the oracle θ_B^ft.

Base models are saved as ``BertModel`` (no head: θ_A and θ_B), fine-tunes as ``BertForSequenceClassification``,
with the tokenizer, so every folder loads with ``from_pretrained`` and works as a recipe's model path.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel


def done(folder: Path) -> Optional[dict]:
    marker = folder / "training.json"
    return json.loads(marker.read_text()) if marker.is_file() else None


def finish(folder: Path, record: dict) -> dict:
    (folder / "training.json").write_text(json.dumps(record, indent=2))
    return record


def _chunks(tokenizer, docs: Sequence[str], length: int) -> torch.Tensor:
    """The corpus as one token stream cut into [CLS] … [SEP] blocks of ``length`` tokens."""
    ids: list[int] = []
    for doc in docs:
        ids += tokenizer(doc, add_special_tokens=False)["input_ids"]
    body = length - 2
    blocks = [ids[i:i + body] for i in range(0, len(ids) - body + 1, body)]
    return torch.tensor([[tokenizer.cls_token_id, *b, tokenizer.sep_token_id] for b in blocks])


def pretrain_mlm(out: Path, tokenizer_dir: Path, docs: Sequence[str], *, steps: int, init: Optional[Path] = None,
                 config: Optional[dict] = None, batch_size: int = 16, length: int = 128, lr: float = 1e-4,
                 seed: int = 0) -> dict:
    """Masked-LM training for ``steps`` steps (BERT's 15% / 80-10-10 masking, AdamW, linear decay), from ``init``
    (a BertModel folder; the MLM head starts fresh) or from a random ``config``. Saves the BertModel to ``out``.
    The loss is computed on the masked positions only (the vocabulary projection of the others is skipped)."""
    if (record := done(out)) is not None:
        return record
    torch.manual_seed(seed)
    random.seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if init is not None:
        model = BertForMaskedLM.from_pretrained(init)
    else:
        model = BertForMaskedLM(BertConfig(vocab_size=tokenizer.vocab_size, **config))
    data = _chunks(tokenizer, docs, length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, steps // 10))
                                                 * max(0.0, 1 - s / steps))
    generator = torch.Generator().manual_seed(seed)
    special = torch.tensor([tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id])
    model.train()
    start, losses = time.perf_counter(), []
    for step in range(steps):
        batch = data[torch.randint(len(data), (batch_size,), generator=generator)]
        chosen = (torch.rand(batch.shape, generator=generator) < 0.15) & ~torch.isin(batch, special)
        labels = batch[chosen]
        inputs = batch.clone()
        roll = torch.rand(batch.shape, generator=generator)
        inputs[chosen & (roll < 0.8)] = tokenizer.mask_token_id
        swap = chosen & (roll >= 0.8) & (roll < 0.9)
        inputs[swap] = torch.randint(tokenizer.vocab_size, (int(swap.sum()),), generator=generator)
        hidden = model.bert(input_ids=inputs).last_hidden_state[chosen]
        loss = torch.nn.functional.cross_entropy(model.cls(hidden), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
    # a BertModel with its pooler (which masked LM does not train: θ_A's own, or a fresh one from scratch), so
    # θ_A and θ_B have the same tensors
    base = BertModel.from_pretrained(init) if init is not None else BertModel(model.config)
    missing = base.load_state_dict(model.bert.state_dict(), strict=False).missing_keys
    assert all(k.startswith("pooler.") for k in missing), missing
    base.save_pretrained(out)
    tokenizer.save_pretrained(out)
    tail = losses[-max(1, steps // 10):]
    return finish(out, {"kind": "mlm", "steps": steps, "batch_size": batch_size, "length": length, "lr": lr,
                         "init": str(init) if init else "random", "blocks": len(data),
                         "first_loss": losses[0], "final_loss": sum(tail) / len(tail),
                         "seconds": time.perf_counter() - start})


def finetune_classifier(out: Path, base: Path, texts: Sequence[str], labels: Sequence[int], label_names: list[str],
                        *, epochs: float = 1.0, batch_size: int = 32, max_length: int = 64, lr: float = 1e-4,
                        seed: int = 0) -> dict:
    """Full fine-tuning of ``base`` with a new classification head (AdamW, linear decay) for ``epochs`` passes."""
    if (record := done(out)) is not None:
        return record
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = BertForSequenceClassification.from_pretrained(
        base, num_labels=len(label_names), id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)})
    steps = max(1, int(epochs * len(texts) / batch_size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / steps))
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    model.train()
    start, losses = time.perf_counter(), []
    for _ in range(steps):
        if len(order) < batch_size:
            order += torch.randperm(len(texts), generator=generator).tolist()
        rows, order = order[:batch_size], order[batch_size:]
        batch = tokenizer([texts[i] for i in rows], truncation=True, max_length=max_length, padding=True,
                          return_tensors="pt")
        loss = model(**batch, labels=torch.tensor([labels[i] for i in rows])).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    tail = losses[-max(1, steps // 10):]
    return finish(out, {"kind": "classification", "base": str(base), "steps": steps, "batch_size": batch_size,
                         "max_length": max_length, "lr": lr, "final_loss": sum(tail) / len(tail),
                         "seconds": time.perf_counter() - start})
