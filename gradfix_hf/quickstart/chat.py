"""A tiny chat model pair for the SFT recipes (``objective: sft``): quickstart stage 3.

* ``chat/source`` (θ_A): a 2-layer Llama-architecture causal LM pre-trained on corpus A, with a ChatML chat
  template (Qwen2's, as an instruct release ships it) and ``<|im_end|>`` as its end-of-turn token,
* ``chat/source-finetuned`` (θ_A^ft): θ_A fine-tuned on toy conversations (``chat/data/*.jsonl``, ``messages``
  column): the user gives a review, the assistant lists its feeling words and a verdict,
* ``chat/source-lora`` (θ_A^ft as a PEFT LoRA adapter on θ_A, trained on the same conversations),
* ``chat/target`` (θ_B): the new release, θ_A's pre-training continued on corpus B.

The fine-tunes put their loss on the assistant's tokens, rendered by the same code the votes use
(:func:`gradfix_hf.objectives.chat.render_row`).
"""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..objectives.chat import render_row
from .toy import NEGATIVE, NEUTRAL, POSITIVE, corpus, sentiment_rows, write_jsonl

Log = Callable[[str], None]
SPECIALS = ["<|endoftext|>", "<unk>", "<pad>", "<|im_start|>", "<|im_end|>"]
CHAT_WORDS = ["system", "user", "assistant", "review", "list", "the", "feeling", "words", "and", "verdict", ":",
              ".", "positive", "negative", "You", "are", "a", "brief", "critic"]
# Qwen2's template (without tools): a default system prompt when the conversation has none
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a brief critic .<|im_end|>\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
STEPS = {"source": 150, "source-finetuned": 150, "source-lora": 150, "target": 80}
MARKER = ".built"


def chat_tokenizer():
    """A word-level fast tokenizer over the toy words, with the ChatML template and special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(dict.fromkeys([*SPECIALS, *CHAT_WORDS, *POSITIVE, *NEGATIVE, *NEUTRAL]))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # words joined by spaces
    tok.add_special_tokens(SPECIALS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=128, unk_token="<unk>",
                                        pad_token="<pad>", eos_token="<|im_end|>", bos_token="<|endoftext|>")
    tokenizer.chat_template = CHATML
    return tokenizer


def conversation_rows(count: int, seed: int) -> list[dict]:
    """Toy conversations in the ``messages`` column: a review in, its feeling words (in order) and verdict out."""
    rng = random.Random(seed)
    rows = []
    for sentence in sentiment_rows(count, seed):
        words = sentence["text"].split()
        feelings = [w for w in words if w in POSITIVE or w in NEGATIVE]
        verdict = "positive" if sentence["label"] == 1 else "negative"
        messages = [{"role": "user", "content": "review : " + sentence["text"]},
                    {"role": "assistant", "content": f"feeling words : {' '.join(feelings)} . verdict : {verdict} ."}]
        if rng.random() < 0.3:
            messages.insert(0, {"role": "system", "content": "list the feeling words and the verdict ."})
        rows.append({"messages": messages})
    return rows


def pretraining_rows(count: int, seed: int, topic_size: int) -> list[dict]:
    """Plain-text pre-training rows: the toy corpus's topic sentences, and a quarter of sentences that also use the
    chat words (a base model has seen every word of its vocabulary, not the chat format)."""
    rng = random.Random(seed)
    rows = [{"text": s} for s in corpus(count, seed, topic_size)]
    for row in rows[::4]:
        words = row["text"].split() + rng.sample(CHAT_WORDS[3:], 4)
        rng.shuffle(words)
        row["text"] = " ".join(words)
    return rows


def ensure_chat_assets(workdir: Path, *, seed: int = 0, log: Log = print) -> bool:
    """Build ``workdir/chat/`` unless its marker says it is there; True when it was built now."""
    folder = Path(workdir) / "chat"
    if (folder / MARKER).is_file():
        return False
    start = time.perf_counter()
    log(f"gradfix quickstart --chat: building a tiny chat model pair and toy conversations in {folder} "
        "(once; about 15 s on 2 CPU cores)")
    build_chat_models(folder, seed, log)
    (folder / MARKER).write_text("1\n")
    log(f"gradfix quickstart --chat: built in {time.perf_counter() - start:.0f} s")
    return True


def chat_paths(folder: Path) -> dict[str, Path]:
    return {name: Path(folder) / name for name in (*STEPS, "data")}


def build_chat_models(folder: Path, seed: int, log: Log) -> None:
    """The chat pair's models and data under ``folder`` (``source``, ``source-finetuned``, ``source-lora``,
    ``target``, ``data/{train,validation,test}.jsonl``)."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    paths = chat_paths(folder)
    tokenizer = chat_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    generation = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id, do_sample=False, max_new_tokens=24)
    rows = conversation_rows(1000, seed + 51)
    write_jsonl(paths["data"] / "train.jsonl", rows[:600])
    write_jsonl(paths["data"] / "validation.jsonl", rows[600:800])
    write_jsonl(paths["data"] / "test.jsonl", rows[800:])

    def save(model, name: str) -> None:
        model.save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
        generation.save_pretrained(paths[name])

    log(f"  θ_A     chat/source              a 2-layer Llama pre-trained on corpus A with a ChatML template, "
        f"{STEPS['source']} steps")
    torch.manual_seed(seed + 61)
    source = LlamaForCausalLM(config)
    train_causal_lm(source, tokenizer, pretraining_rows(3000, seed + 61, topic_size=12),
                    steps=STEPS["source"], lr=3e-3, seed=seed + 61)
    save(source, "source")

    log(f"  θ_A^ft  chat/source-finetuned    θ_A fine-tuned on toy conversations (chat/data/*.jsonl), "
        f"{STEPS['source-finetuned']} steps")
    tuned = LlamaForCausalLM.from_pretrained(paths["source"])
    train_causal_lm(tuned, tokenizer, rows[:600], steps=STEPS["source-finetuned"], lr=2e-3, seed=seed + 71)
    save(tuned, "source-finetuned")

    log(f"  θ_A^ft  chat/source-lora         the same fine-tune as a LoRA adapter on θ_A (r=8), "
        f"{STEPS['source-lora']} steps")
    _train_lora(paths, tokenizer, rows[:600], seed + 81)

    log(f"  θ_B     chat/target              the new release: θ_A's pre-training continued on corpus B, "
        f"{STEPS['target']} steps")
    target = LlamaForCausalLM.from_pretrained(paths["source"])
    train_causal_lm(target, tokenizer, pretraining_rows(3000, seed + 91, topic_size=6),
                    steps=STEPS["target"], lr=1.5e-3, seed=seed + 91)
    save(target, "target")


def _train_lora(paths: dict[str, Path], tokenizer, rows: Sequence[dict], seed: int) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)  # the adapter's A factors
    base = LlamaForCausalLM.from_pretrained(paths["source"])
    # the chat tokens are new to θ_A: their embeddings and output rows are trained whole, as chat LoRAs on base
    # models do (modules_to_save)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj",
                                                            "down_proj"],
                        modules_to_save=["embed_tokens", "lm_head"], task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    train_causal_lm(model, tokenizer, rows, steps=STEPS["source-lora"], lr=5e-3, seed=seed)
    model.save_pretrained(paths["source-lora"])
    tokenizer.save_pretrained(paths["source-lora"])


def padded_batch(batch: Sequence, pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids, attention mask, labels) of rendered rows, right-padded; labels are -100 off the loss tokens."""
    width = max(len(r.input_ids) for r in batch)
    ids = torch.full((len(batch), width), pad)
    labels = torch.full((len(batch), width), -100)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for i, r in enumerate(batch):
        n = len(r.input_ids)
        ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor([t if keep else -100 for t, keep in zip(r.input_ids, r.loss_mask)])
        attention[i, :n] = 1
    return ids, attention, labels


def train_causal_lm(model, tokenizer, rows: Sequence[dict], *, steps: int, lr: float, seed: int,
                    batch_size: int = 16) -> None:
    """Next-token training on rows of ``text`` (every token) or ``messages`` (the assistant's tokens)."""
    rendered = [render_row(row, "messages" if "messages" in row else "text", tokenizer, max_length=128)
                for row in rows]
    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        ids, attention, labels = padded_batch(rng.sample(rendered, batch_size), tokenizer.pad_token_id)
        loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
