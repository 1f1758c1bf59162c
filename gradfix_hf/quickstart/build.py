"""The quickstart's workdir, built in stages that its ``.built`` marker records.

Stage 1, what ``recipes/quickstart.yaml`` uses:

* ``source`` (θ_A): a 2-layer BERT pre-trained by masked LM on corpus A,
* ``source-finetuned`` (θ_A^ft): θ_A fine-tuned on the toy sentiment task,
* ``target`` (θ_B): a "new release", θ_A's masked-LM pre-training continued on a different corpus B (other topic
  structure), so θ_B's weights and its task-relevant features drift away from θ_A's,
* ``data/{train,validation,test}.jsonl``: the sentiment task's splits.

Stage 2, what the other offline recipes in ``recipes/`` add (merges need a second task, multi-source a second
source):

* ``data/topic/{train,validation,test}.jsonl``: a toy topic task, and ``source-topic-finetuned``: θ_A fine-tuned
  on it,
* ``second-source`` (θ_C): θ_A's pre-training continued on a third corpus C, and ``second-source-finetuned``:
  θ_C fine-tuned on the sentiment task (the same task and data as θ_A^ft).

Stage 3: a model card on each fine-tune naming its base (``base_model``), which ``gradfix rebase`` reads.

Each stage is seeded on its own and only reads what earlier stages wrote, so a stage comes out the same whether it
is built with the others or later, in a workdir an earlier version built (its marker says ``ok``: stage 1 only).
"""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from ..runtime import small_model_threads
from .toy import (LABELS, TOPIC_LABELS, corpus, sentiment_rows, topic_rows, train_classifier, train_masked_lm,
                  vocabulary, word_tokenizer, write_jsonl)

Log = Callable[[str], None]
#: the marker holds the last stage built (``ok`` was written when there was one stage)
MARKER = ".built"
#: training steps of each model (the phase lines quote them)
STEPS = {"source": 300, "source-finetuned": 300, "target": 150, "source-topic-finetuned": 150,
         "second-source": 100, "second-source-finetuned": 150}


def print_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def built_version(workdir: Path) -> int:
    """The last stage the workdir's marker records (0: none, or an unreadable marker)."""
    marker = Path(workdir) / MARKER
    if not marker.is_file():
        return 0
    text = marker.read_text(errors="replace").strip()
    if text == "ok":  # written before the stages were numbered: stage 1 only
        return 1
    return int(text) if text.isdigit() else 0


def ensure_quickstart_assets(workdir: Path, *, seed: int = 0, log: Optional[Log] = None) -> list[int]:
    """Build the stages ``workdir`` lacks (all of them in a new folder) and record each in its marker as soon as
    it is written; returns the stages built. ``log`` gets one line per phase (default: stderr)."""
    workdir = Path(workdir)
    log = log or print_to_stderr
    done = built_version(workdir)
    todo = [stage for stage in STAGES if stage > done]
    if not todo:
        return []
    start = time.perf_counter()
    if done == 0:
        log(f"gradfix quickstart: building tiny models and toy data in {workdir} (once; about 20 s on 2 CPU cores)")
    else:
        log(f"gradfix quickstart: {workdir} was built by an earlier version; adding what the other offline "
            "recipes in recipes/ need (once; about 5 s)")
    with small_model_threads(), _quiet_transformers():  # one thread: the same models whatever the core count
        for stage in todo:
            STAGES[stage](workdir, seed, log)
            workdir.joinpath(MARKER).write_text(f"{stage}\n")
    log(f"gradfix quickstart: built in {time.perf_counter() - start:.0f} s")
    return todo


def build_quickstart_assets(workdir: Path, *, seed: int = 0, log: Optional[Log] = None) -> dict[str, Path]:
    """Build every stage under ``workdir`` (whatever its marker says) and return the paths by name."""
    workdir = Path(workdir)
    workdir.joinpath(MARKER).unlink(missing_ok=True)
    ensure_quickstart_assets(workdir, seed=seed, log=log or (lambda line: None))
    return asset_paths(workdir)


def asset_paths(workdir: Path) -> dict[str, Path]:
    names = ("source", "source-finetuned", "target", "data", "source-topic-finetuned", "second-source",
             "second-source-finetuned")
    return {name: Path(workdir) / name for name in names}


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """The build's expected "newly initialized head" reports and weight-loading bars are noise here; the bars come
    back afterwards only if they were on (``--no-progress`` switches them off for the whole process)."""
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled() and not are_progress_bars_disabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _save(model, tokenizer, folder: Path) -> None:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _build_trio(workdir: Path, seed: int, log: Log) -> None:
    """Stage 1: θ_A, θ_A^ft, θ_B and the sentiment splits (their seeds and order fix the quickstart's figures)."""
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

    paths = asset_paths(workdir)
    tokenizer = word_tokenizer(vocabulary())
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    log(f"  θ_A     source                   a 2-layer BERT pre-trained by masked LM on corpus A, "
        f"{STEPS['source']} steps")
    torch.manual_seed(seed)
    source = BertForMaskedLM(config)
    train_masked_lm(source, tokenizer, corpus(4000, seed, topic_size=12), steps=STEPS["source"], lr=2e-3, seed=seed)
    _save(source, tokenizer, paths["source"])

    rows = sentiment_rows(1200, seed + 1)
    write_jsonl(paths["data"] / "train.jsonl", rows[:800])
    write_jsonl(paths["data"] / "validation.jsonl", rows[800:1000])
    write_jsonl(paths["data"] / "test.jsonl", rows[1000:])
    log(f"  θ_A^ft  source-finetuned         θ_A fine-tuned on a toy sentiment task (data/*.jsonl), "
        f"{STEPS['source-finetuned']} steps")
    finetuned = BertForSequenceClassification.from_pretrained(
        paths["source"], num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    train_classifier(finetuned, tokenizer, rows[:800], steps=STEPS["source-finetuned"], lr=1e-3, seed=seed)
    _save(finetuned, tokenizer, paths["source-finetuned"])

    log(f"  θ_B     target                   the new release: θ_A's pre-training continued on corpus B, "
        f"{STEPS['target']} steps")
    target = BertForMaskedLM.from_pretrained(paths["source"])
    train_masked_lm(target, tokenizer, corpus(4000, seed + 7, topic_size=6), steps=STEPS["target"], lr=1e-3,
                    seed=seed + 7)
    _save(target, tokenizer, paths["target"])


def _build_merge_inputs(workdir: Path, seed: int, log: Log) -> None:
    """Stage 2: a second task vector of θ_A (the topic task) and a second source θ_C with its sentiment fine-tune.
    Every model is seeded before it is created, so nothing depends on what ran before in the process."""
    from transformers import BertForMaskedLM

    paths = asset_paths(workdir)
    tokenizer = word_tokenizer(vocabulary())
    rows = topic_rows(1200, seed + 21)
    write_jsonl(paths["data"] / "topic" / "train.jsonl", rows[:800])
    write_jsonl(paths["data"] / "topic" / "validation.jsonl", rows[800:1000])
    write_jsonl(paths["data"] / "topic" / "test.jsonl", rows[1000:])
    log(f"  θ_A^ft  source-topic-finetuned   θ_A fine-tuned on a toy topic task (data/topic/*.jsonl), "
        f"{STEPS['source-topic-finetuned']} steps")
    _fine_tune(paths["source"], paths["source-topic-finetuned"], tokenizer, rows[:800], TOPIC_LABELS,
               STEPS["source-topic-finetuned"], seed + 31)

    log(f"  θ_C     second-source            another pre-training: θ_A's continued on corpus C, "
        f"{STEPS['second-source']} steps")
    torch.manual_seed(seed + 41)
    second = BertForMaskedLM.from_pretrained(paths["source"])
    train_masked_lm(second, tokenizer, corpus(4000, seed + 41, topic_size=9), steps=STEPS["second-source"],
                    lr=1e-3, seed=seed + 41)
    _save(second, tokenizer, paths["second-source"])
    log(f"  θ_C^ft  second-source-finetuned  θ_C fine-tuned on the sentiment task, "
        f"{STEPS['second-source-finetuned']} steps")
    _fine_tune(paths["second-source"], paths["second-source-finetuned"], tokenizer,
               sentiment_rows(1200, seed + 1)[:800], LABELS, STEPS["second-source-finetuned"], seed + 43)


def _fine_tune(base: Path, out: Path, tokenizer, rows: list[dict], labels: dict[int, str], steps: int,
               seed: int) -> None:
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)  # the new head's initialisation
    model = BertForSequenceClassification.from_pretrained(
        base, num_labels=len(labels), id2label=labels, label2id={v: k for k, v in labels.items()})
    train_classifier(model, tokenizer, rows, steps=steps, lr=1e-3, seed=seed)
    _save(model, tokenizer, out)


#: each fine-tune → the base it was trained from (what its model card names)
FINETUNE_BASES = {"source-finetuned": "source", "source-topic-finetuned": "source",
                  "second-source-finetuned": "second-source"}


def _write_cards(workdir: Path, seed: int, log: Log) -> None:
    """Stage 3: a model card on each fine-tune naming its base (``base_model``), as the Trainer and PEFT write
    one, so that ``gradfix rebase`` finds θ_A by itself."""
    from huggingface_hub import ModelCard, ModelCardData

    paths = asset_paths(workdir)
    log("  cards   *-finetuned/README.md      each fine-tune's model card names its base (base_model)")
    for finetune, base in FINETUNE_BASES.items():
        data = ModelCardData(base_model=str(paths[base].resolve()), library_name="transformers",
                             pipeline_tag="text-classification")
        ModelCard(f"---\n{data.to_yaml()}\n---\n\n# {finetune}\n\nA fine-tune of `{base}` built by `gradfix "
                  "quickstart` (toy data, tiny model).\n").save(paths[finetune] / "README.md")


#: stage number → its builder, in build order
STAGES: dict[int, Callable[[Path, int, Log], None]] = {1: _build_trio, 2: _build_merge_inputs, 3: _write_cards}
#: the stage a complete workdir records
BUILD_VERSION = max(STAGES)
