"""The SFT drift experiment (experiments/sft_drift.py) end to end, at a tiny size.

The real run reads SmolLM2-135M-Instruct, BBC articles and 20newsgroups from PyPI packages; here the same script
runs its whole pipeline (LoRA SFT of θ_A, continued training to three drift levels, oracle LoRAs, one sweep per
level × N × seed, the summary, the table and the plots) on the tiny chat pair ``gradfix quickstart --chat``
builds, in a fresh process, offline.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gradfix_hf.quickstart.chat import pretraining_rows

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "sft_drift.py"


@pytest.mark.slow
def test_tiny_sft_drift_experiment_end_to_end(quickstart_root, tmp_path):
    chat = quickstart_root[0] / "gradfix-quickstart" / "chat"
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(row["text"] for row in pretraining_rows(300, seed=9, topic_size=4)))
    out = tmp_path / "report.json"
    command = [sys.executable, str(SCRIPT), "--work", str(tmp_path / "work"), "--json", str(out),
               "--markdown", str(tmp_path / "report.md"), "--plot-dir", str(tmp_path / "plots"),
               "--source", str(chat / "source"), "--rows-file", str(chat / "data" / "train.jsonl"),
               "--docs-file", str(docs), "--drift-steps", "2", "6", "20", "--drift-lr", "5e-3", "--rows", "4", "8",
               "--seeds", "0", "1", "--alphas", "0.5", "1.0", "--sft-steps", "30", "--sft-lr", "5e-3",
               "--train", "120", "--validation", "8", "--test", "10", "--max-new-tokens", "8"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert len(report["runs"]) == 3 * 2 * 2
    drift = [report["drift"][str(s)]["relative_drift"] for s in (2, 6, 20)]
    assert 0 < drift[0] < drift[1] < drift[2]  # the levels drift further with more steps
    for level in ("2", "6", "20"):
        rows = report["summary"][level]
        assert {"zero-shot", "naive", "oracle", "gradfix N=4", "gradfix N=8", "auto N=8", "few-shot N=4"} <= set(rows)
        assert rows["gradfix N=8"]["nll"]["n"] == 2 and 0 <= rows["gradfix N=8"]["rouge"]["mean"] <= 1
        runs = [r for r in report["runs"] if r["level"] == int(level)]
        for run in runs:  # auto's test score is that of the candidate it chose
            auto = run["methods"]["auto"]
            assert auto["test"] == run["methods"][auto["chose"]]["test"]
    # the LoRA fine-tune learned the conversations: θ_A^ft's NLL is far below θ_A's
    reference = report["reference"]
    assert reference["source_finetuned"]["nll"] < reference["source"]["nll"] - 1
    table = (tmp_path / "report.md").read_text()
    assert table.count("\n| ") >= 1 + 2 + 3 * 2 + 1 and "Naive addition keeps this share" in table
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["sft-drift-nll.png", "sft-drift-rouge.png"]
