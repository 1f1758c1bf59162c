"""Tiny, real models built from configs for the tests (no network).

For each architecture (BERT-like classifier, T5-like seq2seq, GPT-2-like causal LM) a trio is saved:
θ_A (random init, seed 0), θ_A^ft (θ_A trained a few steps on the toy task), θ_B (another random init,
seed 1: a different model of the same architecture) and θ_B^ft (θ_B trained a few steps, for the oracle).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# tiny models on one thread: several times faster on a busy machine, and the same floats whatever the core count
# (gradfix_hf/runtime/threads.py); subprocesses (CLI runs, distributed workers) inherit it
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("GRADFIX_NUM_THREADS", "1")

import datasets  # noqa: F401  (imported before any test captures stderr: its log handler keeps the real stream)
import pytest
import torch
import transformers

torch.set_num_threads(int(os.environ["GRADFIX_NUM_THREADS"]))

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
def quickstart_root(tmp_path_factory):
    """A folder holding ``gradfix-quickstart/``, built once per session as ``gradfix quickstart`` and ``gradfix
    quickstart --chat`` build it (the offline recipes and the README's examples run from it); also the phase lines
    the build logged."""
    from gradfix_hf.quickstart import ensure_chat_assets, ensure_quickstart_assets
    from gradfix_hf.quickstart.build import STAGES
    from gradfix_hf.runtime import small_model_threads

    root = tmp_path_factory.mktemp("quickstart")
    lines: list[str] = []
    with small_model_threads():  # as `gradfix quickstart` builds: the same models, the same figures
        assert ensure_quickstart_assets(root / "gradfix-quickstart", log=lines.append) == sorted(STAGES)
        assert ensure_chat_assets(root / "gradfix-quickstart", log=lines.append)  # --chat: the chat pair
    return root, lines


@pytest.fixture(scope="session")
def trios(tmp_path_factory) -> dict:
    """Lazily built trios, one per architecture, shared by the whole session."""
    cache: dict[str, dict[str, Path]] = {}

    def get(kind: str) -> dict[str, Path]:
        if kind not in cache:
            cache[kind] = build_trio(kind, tmp_path_factory.mktemp(f"trio-{kind}"))
        return cache[kind]

    return get


# --- a tiny CLIP trio (clip-zero-shot objective) --------------------------------------------------------------------

CLIP_COLOURS = {"blue": (40, 60, 220), "green": (40, 190, 60), "red": (220, 50, 40)}
CLIP_WORDS = ["a", "photo", "of", "the", "square", "colour", "blurry", ".", *CLIP_COLOURS]
CLIP_SPLITS = {"train": 8, "validation": 4, "test": 4}  # images per class


def clip_tokenizer():
    """A real ``CLIPTokenizer`` (byte-level BPE, ``</w>`` word ends) over a tiny vocabulary, built offline."""
    from transformers import CLIPTokenizer

    chars = sorted({c for w in CLIP_WORDS for c in w})
    vocab = {}
    for token in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(token, len(vocab))
    merges = []
    for word in CLIP_WORDS:  # merge left to right until the word (with its </w> end) is one token
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append((parts[0], parts[1]))
            vocab.setdefault(parts[0] + parts[1], len(vocab))
            parts = [parts[0] + parts[1]] + parts[2:]
    for special in ("<unk>", "<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    # real CLIP's byte-level vocabulary has no unknown characters, so its unk is <|endoftext|>; this tiny one does,
    # and an unknown word must not read as the end of the prompt (the text tower pools at the first end token)
    return CLIPTokenizer(vocab=vocab, merges=list(dict.fromkeys(merges)), unk_token="<unk>", model_max_length=32)


def clip_image(colour: str, rng) -> "PIL.Image.Image":
    """A 40×40 noisy grey background with a jittered square of the class colour somewhere in it."""
    from PIL import Image

    grey = rng.randint(90, 160)
    image = Image.new("RGB", (40, 40), (grey, grey, grey))
    pixels = image.load()
    for x in range(40):
        for y in range(40):
            v = grey + rng.randint(-25, 25)
            pixels[x, y] = (v, v, v)
    side = rng.randint(14, 26)
    left, top = rng.randint(0, 40 - side), rng.randint(0, 40 - side)
    base = CLIP_COLOURS[colour]
    fill = tuple(max(0, min(255, c + rng.randint(-30, 30))) for c in base)
    for x in range(left, left + side):
        for y in range(top, top + side):
            pixels[x, y] = fill
    return image


def write_clip_images(root: Path, seed: int = 0) -> Path:
    """An ``imagefolder`` layout: root/<split>/<colour>/<i>.png."""
    import random

    rng = random.Random(seed)
    for split, count in CLIP_SPLITS.items():
        for colour in CLIP_COLOURS:
            folder = root / split / colour
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                clip_image(colour, rng).save(folder / f"{colour}-{i}.png")
    return root


def tiny_clip_config(tokenizer) -> transformers.CLIPConfig:
    eos = tokenizer.eos_token_id
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=32, projection_dim=16, eos_token_id=eos,
                bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8, projection_dim=16)
    return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)


def clip_image_processor() -> "transformers.CLIPImageProcessor":
    return transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def fine_tune_clip_vision(model, tokenizer, processor, image_root: Path, steps: int = 12, lr: float = 3e-3,
                          seed: int = 0):
    """A few AdamW steps on the zero-shot cross-entropy (one template), vision tower only (the paper's protocol)."""
    import torch.nn.functional as F
    from PIL import Image

    files = sorted((image_root / "train").glob("*/*.png"))
    colours = sorted(CLIP_COLOURS)
    labels = torch.tensor([colours.index(f.parent.name) for f in files])
    pixels = processor(images=[Image.open(f).convert("RGB") for f in files], return_tensors="pt").pixel_values
    with torch.no_grad():
        text = tokenizer([f"a photo of a {c} square." for c in colours], padding=True, return_tensors="pt")
        classes = F.normalize(model.get_text_features(**text).pooler_output, dim=-1)
    for p in model.parameters():
        p.requires_grad_(False)
    trained = [p for n, p in model.named_parameters() if n.startswith(("vision_model.", "visual_projection."))]
    for p in trained:
        p.requires_grad_(True)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(trained, lr=lr)
    model.train()
    for _ in range(steps):
        order = torch.randperm(len(files))[:12]
        image = F.normalize(model.get_image_features(pixel_values=pixels[order]).pooler_output, dim=-1)
        loss = F.cross_entropy(model.logit_scale.exp() * image @ classes.T, labels[order])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model


def build_clip_trio(root: Path) -> dict[str, Path]:
    """θ_A (seed 0), θ_A^ft (θ_A's vision tower fine-tuned on the coloured squares), θ_B (seed 1), and the images
    as an imagefolder (train/validation/test); each model folder has a CLIP tokenizer and image processor."""
    tokenizer, processor = clip_tokenizer(), clip_image_processor()
    config = tiny_clip_config(tokenizer)
    paths = {k: root / k for k in ("source", "source_finetuned", "target")}
    paths["images"] = write_clip_images(root / "images")
    for seed, key in ((0, "source"), (0, "source_finetuned"), (1, "target")):
        torch.manual_seed(seed)
        model = transformers.CLIPModel(config).eval()
        if key == "source_finetuned":
            model = fine_tune_clip_vision(model, tokenizer, processor, paths["images"], seed=seed)
        model.save_pretrained(paths[key])
        tokenizer.save_pretrained(paths[key])
        processor.save_pretrained(paths[key])
    return paths


def clip_recipe_dict(trio: dict[str, Path], **overrides) -> dict:
    recipe = {
        "objective": "clip-zero-shot",
        "models": {"source": str(trio["source"]), "source_finetuned": str(trio["source_finetuned"]),
                   "target": str(trio["target"])},
        "data": {"path": str(trio["images"]), "samples_per_class": 3, "seed": 0,
                 "templates": ["a photo of a {} square.", "a blurry photo of the {} square."]},
        "method": {"mask": "gradfix", "alpha": 0.5},
    }
    for key, value in overrides.items():
        recipe[key] = {**recipe[key], **value} if isinstance(value, dict) and isinstance(recipe.get(key), dict) else value
    return recipe


@pytest.fixture(scope="session")
def clip_trio(tmp_path_factory) -> dict[str, Path]:
    return build_clip_trio(tmp_path_factory.mktemp("trio-clip"))


def reference_grads(model, loss_fn, examples, names):
    """Per-sample gradients by a hand-written loop (backward on a fresh graph per sample): what the vote
    engines are checked against."""
    params = dict(model.named_parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    for n in names:
        params[n].requires_grad_(True)
    grads = []
    for example in examples:
        for n in names:
            params[n].grad = None
        loss_fn(model, example).backward()
        grads.append({n: (params[n].grad.detach().clone() if params[n].grad is not None
                          else torch.zeros_like(params[n])) for n in names})
    return grads


@pytest.fixture(scope="module")
def bert_splits(trios, tmp_path_factory):
    """Validation and test files cut from the BERT trio's held-out rows (disjoint from each other)."""
    trio = trios("bert")
    rows = [json.loads(line) for line in trio["test"].read_text().splitlines()]
    root = tmp_path_factory.mktemp("splits")
    write_jsonl(root / "validation.jsonl", rows[:10])
    write_jsonl(root / "test.jsonl", rows[10:])
    return trio, root / "validation.jsonl", root / "test.jsonl"


def noise_ties(reference_grads, names, name):
    """Coordinates where every sample's reference gradient is float noise (the module docstring's criterion)."""
    scale = torch.tensor([max(float(g[k].abs().max()) for k in names) for g in reference_grads])
    stacked = torch.stack([g[name] for g in reference_grads]).abs()
    return (stacked <= 1e-9 * scale.view(-1, *([1] * (stacked.dim() - 1)))).all(0)


def assert_votes_agree(fast, reference_grads, names, max_fraction=0.005):
    """The fast engine's (votes, evidence) are the signs and evidence of the reference loop's gradients, except on
    coordinates whose every per-sample gradient is float noise (at most ``max_fraction`` of them)."""
    from gradfix_hf.votes import drop_noise

    votes, evidence = fast
    n_coords, excused = 0, 0
    for name in names:
        per_sample = drop_noise(torch.stack([g[name] for g in reference_grads]).float())
        expected = -torch.sign(per_sample).sum(0)
        noise = noise_ties(reference_grads, names, name)
        differ = votes[name].to(torch.int32) != expected.to(torch.int32)
        assert not (differ & ~noise).any(), f"{name}: {int((differ & ~noise).sum())} non-noise coordinates differ"
        expected_evidence = (per_sample != 0).any(0)
        got_evidence = evidence.get(name, torch.ones_like(expected_evidence))
        assert torch.equal(got_evidence | noise, expected_evidence | noise), name
        excused += int(differ.sum())
        n_coords += differ.numel()
    assert excused <= max_fraction * n_coords, f"{excused} of {n_coords} coordinates differ (noise)"
    return excused
