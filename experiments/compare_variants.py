"""Paired comparison of GradFix variants against plain GradFix over every (N, seed) of the given result files:
the mean test-accuracy difference and wins / ties / losses (same vote, same α grid, α chosen on validation).

    python experiments/compare_variants.py experiments/results/*.json
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def compare(paths: list[Path], baseline: str = "gradfix") -> dict[str, dict]:
    """Per variant key: paired differences (variant − baseline) of the test score, pooled over the files."""
    out: dict[str, dict] = {}
    for path in paths:
        report = json.loads(path.read_text())
        for run in report["runs"]:
            base = run["methods"][baseline]["test"]
            rows = {k: m["test"] for k, m in run["methods"].items() if k not in (baseline, "naive", "oracle")}
            rows.update({k: v["test"] for k, v in run["few_shot"].items()})
            for key, score in rows.items():
                entry = out.setdefault(key, {"label": report["labels"].get(key, key), "diffs": [], "files": set()})
                entry["diffs"].append(score - base)
                entry["files"].add(path.stem)
    return {k: {"label": v["label"], "runs": len(v["diffs"]), "files": sorted(v["files"]),
                "mean_difference": statistics.fmean(v["diffs"]),
                "wins": sum(d > 1e-9 for d in v["diffs"]), "ties": sum(abs(d) <= 1e-9 for d in v["diffs"]),
                "losses": sum(d < -1e-9 for d in v["diffs"])} for k, v in out.items()}


def main(argv: list[str]) -> None:
    paths = [Path(p) for p in argv]
    if not paths:
        raise SystemExit(__doc__)
    print("| variant | runs | mean Δ test accuracy vs GradFix | wins / ties / losses |")
    print("|---|---|---|---|")
    for entry in compare(paths).values():
        print(f"| {entry['label']} | {entry['runs']} | {entry['mean_difference']:+.4f} | "
              f"{entry['wins']} / {entry['ties']} / {entry['losses']} |")


if __name__ == "__main__":
    main(sys.argv[1:])
