"""Benchmark of the vote engines: integer votes v = Σ_n sign(−g_n) of per-sample gradients on a target model.

Measured in one run, on the same model and the same samples:

* ``engine``  — :func:`gradfix_hf.votes.compute_votes_batched` (one batched forward+backward per micro-batch);
* ``authors`` — the authors' method: a batched forward of a micro-batch of 32, per-sample losses, then one
  ``torch.autograd.grad(losses[i], params, retain_graph=True)`` per sample, signs folded into int votes
  (implemented here, it is a baseline and not library code);
* ``loop``    — the exact one-sample reference loop, :func:`gradfix_hf.votes.compute_votes`;
* ``floor``   — one plain batched forward+backward over the same N samples (``loss.sum().backward()`` into
  ``.grad``) plus the time to fold N×P signs into int votes (N passes of ``votes -= sign(g)`` over all
  parameters, with the plain step's gradients as the data).

Every method runs in a fresh child process (forked from a multiprocessing fork server that has only imported
the libraries), so peak memories do not mix. Peak RSS is the kernel's high-water mark (``VmHWM``), reset after the
model is built and warmed up (``/proc/self/clear_refs``); ``ru_maxrss`` is the fallback where that is not
allowed. On CUDA the peak of ``torch.cuda.max_memory_allocated`` is reported too.

Models are built from configs with a seeded random init (no network), fp32, eval mode, with a word-level
tokenizer whose vocabulary fills the model's vocabulary. Inputs have lengths drawn near T (the longest is T
exactly), so right padding is exercised.

    python bench/votes.py --json bench/results/votes-cpu.json          # full size (N=32, T=128)
    python bench/votes.py --quick --json /tmp/votes-quick.json         # reduced size, < 2 minutes
    python bench/votes.py --models bert,gpt2 --authors-max-samples 8   # subset; cap the authors' method
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402

from gradfix_hf.objectives import CausalLMObjective, Seq2SeqObjective, SequenceClassificationObjective  # noqa: E402
from gradfix_hf.quickstart.toy import word_tokenizer  # noqa: E402
from gradfix_hf.recipe import DataConfig  # noqa: E402
from gradfix_hf.votes import NOISE_FLOOR, compute_votes, compute_votes_batched  # noqa: E402
from gradfix_hf.votes.fold import noise_limits  # noqa: E402
# bench/ is on sys.path
from machine import PeakMemory, cpu_busy_seconds, fmt, processor, source_fingerprint, sync, write_json  # noqa: E402

MODELS = ("bert", "t5", "gpt2")
AUTHORS_BATCH = 32  # the authors' code forwards micro-batches of 32
NOISE_RELATIVE = 1e-9  # |g| ≤ 1e-9 · max|g| over the whole model (per sample) counts as float noise
# Float-noise ties: coordinates whose vote fp32 rounding decides. Let g'_n be sample n's gradient computed a
# second, equally exact way (n padded in a batch with the next sample, as the batched engine sees it) and
# m = TIE_BAND × |g_n − g'_n| a few rounding errors of g_n. A coordinate is a tie when for some sample
# |g_n| ≤ m (its sign is within rounding of 0) or ||g_n| − L_n| ≤ m (rounding decides whether it is above the
# noise limit L_n = NOISE_FLOOR × its max |g| in the tensor, i.e. voted or dropped). (On the T5-like model the
# reference loop alone changes ~0.05% of its votes when a relative-bias table also requires grad, which only
# reorders float operations.)
TIE_BAND = 4.0
LABEL_WORDS = {0: "negative", 1: "positive"}
GOALS = {"speedup_vs_research_method": 15.0, "speedup_vs_loop": 1.3, "time_over_floor": 1.2,
         "memory": "peak_rss_mb <= 1.1 * (plain_step_peak_rss_mb + 1 byte/parameter)",
         "mismatch_fraction_excluding_ties": 1e-4}
# Full runs: the authors' method on GPT-2 costs N full batch backwards (minutes each on 2 cores); it is
# measured on this many samples and extrapolated linearly (each autograd.grad call costs the same).
DEFAULT_AUTHORS_CAP = {"gpt2": 8}


# ----------------------------------------------------------------------------------------------- models & data
def model_config(kind: str, quick: bool):
    if kind == "bert":  # all-MiniLM-L6-v2's shape
        size = dict(vocab_size=5000, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=512) if quick else \
            dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                 intermediate_size=1536)
        return transformers.BertConfig(**size, max_position_embeddings=512, pad_token_id=0, num_labels=2,
                                       id2label={0: "negative", 1: "positive"},
                                       label2id={"negative": 0, "positive": 1})
    if kind == "t5":  # t5-small's shape
        size = dict(vocab_size=5000, d_model=128, d_kv=32, d_ff=512, num_layers=2, num_decoder_layers=2,
                    num_heads=4) if quick else \
            dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8)
        return transformers.T5Config(**size, feed_forward_proj="relu", tie_word_embeddings=True, pad_token_id=0,
                                     eos_token_id=1, decoder_start_token_id=0)
    if kind == "gpt2":  # gpt2 (small)'s shape
        size = dict(vocab_size=5000, n_embd=128, n_layer=2, n_head=4) if quick else \
            dict(vocab_size=50257, n_embd=768, n_layer=12, n_head=12)
        return transformers.GPT2Config(**size, n_positions=1024, bos_token_id=0, eos_token_id=0, pad_token_id=2)
    raise ValueError(kind)


PRELOAD = ["torch", "transformers", "gradfix_hf.objectives", "gradfix_hf.quickstart.toy", "gradfix_hf.votes",
           "transformers.models.bert.modeling_bert", "transformers.models.t5.modeling_t5",
           "transformers.models.gpt2.modeling_gpt2", "tokenizers"]
STYLE = {"bert": "bert", "t5": "t5", "gpt2": "gpt2"}
N_SPECIALS = {"bert": 5, "t5": 3, "gpt2": 3}
OBJECTIVE = {"bert": SequenceClassificationObjective, "t5": Seq2SeqObjective, "gpt2": CausalLMObjective}
AUTO = {"bert": transformers.AutoModelForSequenceClassification, "t5": transformers.AutoModelForSeq2SeqLM,
        "gpt2": transformers.AutoModelForCausalLM}
EXTRA_TOKENS = {"bert": 2, "t5": 1, "gpt2": 1}  # [CLS] [SEP] / </s> / the completion word


def build(kind: str, n: int, t: int, quick: bool, device: str):
    """Seeded model, tokenizer, objective, per-sample examples and the voted parameter names."""
    config = model_config(kind, quick)
    vocab_words = [f"w{i}" for i in range(config.vocab_size - N_SPECIALS[kind] - 2)] + list(LABEL_WORDS.values())
    tokenizer = word_tokenizer(vocab_words, style=STYLE[kind])
    tokenizer.model_max_length = max(t, 512)
    assert len(tokenizer) == config.vocab_size, (len(tokenizer), config.vocab_size)
    torch.manual_seed(0)
    model = AUTO[kind].from_config(config).float().eval().to(device)
    data = DataConfig(path="x", max_length=t, label_words=dict(LABEL_WORDS), prompt="{text}")
    cls = OBJECTIVE[kind]
    objective = cls(data, tokenizer, cls.label_space(data, config))
    rng = random.Random(1234)
    filler = vocab_words[:-2]
    lengths = [t] + [rng.randint(t - max(1, t // 8), t) for _ in range(n - 1)]  # token lengths; longest = T
    rng.shuffle(lengths)
    examples = []
    for i, length in enumerate(lengths):
        text = " ".join(rng.choice(filler) for _ in range(length - EXTRA_TOKENS[kind]))
        example = objective.encode({"text": text}, i % 2)  # N/2 per class
        examples.append({k: v.to(device) for k, v in example.items()})
    names = [name for name, _ in model.named_parameters()]
    return model, objective, examples, names


def length_stats(examples: list[dict]) -> dict:
    lengths = [int(e["input_ids"].shape[1]) for e in examples]
    labels = [int((e["labels"] != -100).sum()) for e in examples]
    padded = max(lengths)
    return {"input_tokens_min": min(lengths), "input_tokens_max": padded,
            "input_tokens_mean": round(sum(lengths) / len(lengths), 2),
            "padding_fraction": round(1 - sum(lengths) / (padded * len(lengths)), 4),
            "label_tokens_per_sample": sorted(set(labels))}


# ----------------------------------------------------------------------------------------------- measuring
def warm_up(model, objective, examples, device: str) -> None:
    """One small forward+backward (kernels, allocator), identical for every method; leaves no .grad."""
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    objective.batch_losses(model, objective.collate(examples[:2])).sum().backward()
    for p in params:
        p.grad = None
        p.requires_grad_(False)
    sync(device)


def fold_signs(votes: list[torch.Tensor], grads) -> None:
    """votes -= sign(g): the fold both the authors' method and the floor pay, per sample."""
    for v, g in zip(votes, grads):
        if g is not None:
            v.sub_(torch.sign(g).to(v.dtype))


# ----------------------------------------------------------------------------------------------- the methods
def run_engine(model, objective, examples, names, spec):
    details: dict = {}
    extra = {"details": details} if "details" in inspect.signature(compute_votes_batched).parameters else {}
    # One untimed call on the first micro-batch: the engine's first call on a full batch pays page faults for
    # fresh memory (activations, buffers), which the plain step's figure (best of two) does not include either.
    warm = examples[:spec["micro_batch_size"]]
    start = time.perf_counter()
    compute_votes_batched(model, objective, warm, names, aggregation="majority",
                          micro_batch_size=spec["micro_batch_size"], progress=False)
    sync(spec["device"])
    first_call = {"first_call_seconds": time.perf_counter() - start, "first_call_samples": len(warm)}
    memory = PeakMemory(spec["device"])
    start = time.perf_counter()
    votes, evidence = compute_votes_batched(model, objective, examples, names, aggregation="majority",
                                            micro_batch_size=spec["micro_batch_size"], progress=False, **extra)
    sync(spec["device"])
    seconds = time.perf_counter() - start
    figures = {"seconds": seconds, **memory.read(), **first_call}
    if details:  # how the engine handled each parameter (layer rule, torch.func, exact one-sample fallback)
        figures["parameter_handling"] = {k: len(v) for k, v in details.items()}
        figures["parameters_not_on_a_layer_rule"] = {k: v for k, v in details.items() if k != "rule" and v}
    return figures, {"votes": votes, "evidence": evidence}


def run_loop(model, objective, examples, names, spec):
    memory = PeakMemory(spec["device"])
    start = time.perf_counter()
    votes, evidence = compute_votes(model, objective.loss, examples, names, aggregation="majority", progress=False)
    sync(spec["device"])
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, **memory.read()}
    # Untimed: per coordinate, the largest |g_n| / max|g_n over the whole model| over the samples (noise rule and
    # the size of the gradients where the engines disagree).
    start = time.perf_counter()
    params = [dict(model.named_parameters())[n] for n in names]
    for p in params:
        p.requires_grad_(True)
    relative = [torch.zeros(p.shape, device=p.device) for p in params]
    ties = [torch.zeros(p.shape, dtype=torch.bool, device=p.device) for p in params]
    for index, example in enumerate(examples):
        grads = torch.autograd.grad(objective.loss(model, example), params, allow_unused=True)
        pair = objective.collate([example, examples[(index + 1) % len(examples)]])
        again = torch.autograd.grad(objective.batch_losses(model, pair)[0], params, allow_unused=True)
        scale = max(float(g.detach().abs().max()) for g in grads if g is not None)
        for r, tie, g, g2 in zip(relative, ties, grads, again):
            if g is not None and scale > 0:
                size = g.detach().abs()
                torch.maximum(r, size / scale, out=r)
                if g2 is not None:
                    margin = TIE_BAND * (g.detach() - g2.detach()).abs()  # a few fp32 rounding errors of g
                    limit = noise_limits(g.detach().reshape(1, -1)).squeeze()  # the engines' own noise limit
                    tie |= ((size > 0) & (size <= margin)) | ((size - limit).abs() <= margin)
    for p in params:
        p.requires_grad_(False)
    result["noise_pass_seconds"] = time.perf_counter() - start
    return result, {"votes": votes, "evidence": evidence, "relative": dict(zip(names, relative)),
                    "ties": dict(zip(names, ties))}


def run_authors(model, objective, examples, names, spec):
    """Batched forward of 32, then per-sample autograd.grad(retain_graph=True); optionally capped."""
    cap = spec.get("authors_max_samples")
    params = [dict(model.named_parameters())[n] for n in names]
    for p in params:
        p.requires_grad_(True)
    votes = [torch.zeros(p.shape, dtype=torch.int32, device=p.device) for p in params]
    memory = PeakMemory(spec["device"])
    forward_s, grads_s, measured, per_call = 0.0, 0.0, 0, []
    n_batches = math.ceil(len(examples) / AUTHORS_BATCH)
    for start_index in range(0, len(examples), AUTHORS_BATCH):
        chunk = examples[start_index:start_index + AUTHORS_BATCH]
        if cap is not None and measured >= cap:
            break
        start = time.perf_counter()
        losses = objective.batch_losses(model, objective.collate(chunk))
        sync(spec["device"])
        forward_s += time.perf_counter() - start
        for i in range(len(chunk)):
            if cap is not None and measured >= cap:
                break
            start = time.perf_counter()
            grads = torch.autograd.grad(losses[i], params, retain_graph=True, allow_unused=True)
            fold_signs(votes, grads)
            del grads
            sync(spec["device"])
            per_call.append(time.perf_counter() - start)
            grads_s += per_call[-1]
            measured += 1
        del losses
    for p in params:
        p.requires_grad_(False)
    result = {**memory.read(), "samples_measured": measured, "forward_seconds": forward_s,
              "grad_calls_seconds": grads_s, "grad_call_seconds_min": min(per_call), "grad_call_seconds_max": max(per_call)}
    if measured < len(examples):  # linear extrapolation: N grad calls, one batched forward per 32 samples
        result["seconds_measured"] = forward_s + grads_s
        result["seconds"] = forward_s / max(1, math.ceil(measured / AUTHORS_BATCH)) * n_batches + \
            grads_s / measured * len(examples)
        result["extrapolated"] = True
        return result, None
    result["seconds"] = forward_s + grads_s
    result["extrapolated"] = False
    return result, {"votes": dict(zip(names, votes))}


def run_plain(model, objective, examples, names, spec):
    """The floor: a plain forward+backward of the same batch, then N folds of P signs."""
    params = [dict(model.named_parameters())[n] for n in names]
    for p in params:
        p.requires_grad_(True)
    batch = objective.collate(examples[:spec["micro_batch_size"]])
    memory = PeakMemory(spec["device"])
    runs = []
    for repeat in range(2):
        for p in params:
            p.grad = None
        start = time.perf_counter()
        losses = objective.batch_losses(model, batch)
        losses.sum().backward()
        sync(spec["device"])
        runs.append(time.perf_counter() - start)
        del losses
    result = {**memory.read(), "fwd_bwd_seconds": min(runs), "fwd_bwd_runs_seconds": runs}
    steps = math.ceil(len(examples) / spec["micro_batch_size"])
    result["fwd_bwd_all_samples_seconds"] = min(runs) * steps  # N samples in micro-batches of the engine's size
    grads = [p.grad for p in params]
    votes = [torch.zeros(p.shape, dtype=torch.int32, device=p.device) for p in params]
    fold_signs(votes, grads)  # warm-up of the fold
    start = time.perf_counter()
    for _ in range(len(examples)):
        fold_signs(votes, grads)
    sync(spec["device"])
    result["signs_seconds"] = time.perf_counter() - start
    result["seconds"] = result["fwd_bwd_all_samples_seconds"] + result["signs_seconds"]
    for p in params:
        p.grad = None
        p.requires_grad_(False)
    return result, None


METHODS = {"plain": run_plain, "engine": run_engine, "loop": run_loop, "authors": run_authors}


def worker(spec: dict, out_dir: str) -> None:
    """One method in a fresh process: build, warm up, measure, save figures (JSON) and votes (torch.save)."""
    out = Path(out_dir)
    try:
        torch.set_num_threads(spec["threads"])
        load_before = os.getloadavg()
        start = time.perf_counter()
        model, objective, examples, names = build(spec["model"], spec["n"], spec["t"], spec["quick"], spec["device"])
        build_s = time.perf_counter() - start
        config = model.config
        model_info = {"model_type": config.model_type, "architecture": type(model).__name__,
                      "attn_implementation": getattr(config, "_attn_implementation", None),
                      "config": {k: getattr(config, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                                                                 "num_attention_heads", "intermediate_size")
                                 if hasattr(config, k)},
                      "n_parameters": sum(p.numel() for p in model.parameters()), "n_parameter_tensors": len(names),
                      "lengths": length_stats(examples)}
        warm_up(model, objective, examples, spec["device"])
        figures, tensors = METHODS[spec["method"]](model, objective, examples, names, spec)
        figures.update(model_info=model_info, build_seconds=build_s, loadavg_before=[round(x, 2) for x in load_before],
                       loadavg_after=[round(x, 2) for x in os.getloadavg()], threads=torch.get_num_threads())
        if tensors is not None:
            torch.save({k: {n: t.cpu() for n, t in v.items()} for k, v in tensors.items()}, out / "tensors.pt")
        (out / "figures.json").write_text(json.dumps(figures))
    except BaseException as error:  # report, never hang the parent
        (out / "figures.json").write_text(json.dumps({"error": f"{type(error).__name__}: {error}",
                                                      "traceback": traceback.format_exc()}))
    sys.stdout.flush()
    sys.stderr.flush()


def run_in_child(spec: dict) -> tuple[dict, dict | None]:
    import multiprocessing as mp

    # Children fork from a server process that has imported torch & co. but never computed anything: fresh,
    # cheap, and safe (forking a process that has run OpenMP work can deadlock the child).
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)  # else every child imports them again (seconds each)
    with tempfile.TemporaryDirectory(prefix="gradfix-bench-") as out_dir:
        child = context.Process(target=worker, args=(spec, out_dir))
        child.start()
        child.join()
        path = Path(out_dir) / "figures.json"
        if not path.exists():
            return {"error": f"child process died (exit code {child.exitcode}; out of memory?)"}, None
        figures = json.loads(path.read_text())
        tensors_path = Path(out_dir) / "tensors.pt"
        tensors = torch.load(tensors_path) if tensors_path.exists() else None
    return figures, tensors


# ----------------------------------------------------------------------------------------------- comparing
def mismatch(votes_a: dict, votes_b: dict, names, relative: dict, ties: dict) -> dict:
    """Fraction of coordinates whose votes differ; also excluding noise coordinates (relative gradient ≤ 1e-9),
    and excluding those and the float-noise ties (``ties``: the rule at TIE_BAND)."""
    total = differ = kept = differ_kept = differ_decided = tied = 0
    largest = 0.0
    by_size = {"1e-9..1e-6": 0, "1e-6..1e-4": 0, ">1e-4": 0}
    histogram: dict[int, int] = {}
    for name in names:
        delta = votes_a[name].to(torch.int32) - votes_b[name].to(torch.int32)
        bad = delta != 0
        values, counts = torch.unique(delta[bad].abs(), return_counts=True)
        for v, c in zip(values.tolist(), counts.tolist()):
            histogram[v] = histogram.get(v, 0) + c
        keep = relative[name] > NOISE_RELATIVE
        total += bad.numel()
        differ += int(bad.sum())
        kept += int(keep.sum())
        differ_kept += int((bad & keep).sum())
        differ_decided += int((bad & keep & ~ties[name]).sum())
        tied += int((keep & ties[name]).sum())
        sizes = relative[name][bad & keep]
        if sizes.numel():
            largest = max(largest, float(sizes.max()))
            by_size["1e-9..1e-6"] += int((sizes <= 1e-6).sum())
            by_size["1e-6..1e-4"] += int(((sizes > 1e-6) & (sizes <= 1e-4)).sum())
            by_size[">1e-4"] += int((sizes > 1e-4).sum())
    return {"fraction": differ / total, "count": differ, "fraction_excluding_noise": differ_kept / max(kept, 1),
            "vote_difference_histogram": {str(k): v for k, v in sorted(histogram.items())},
            "count_excluding_noise": differ_kept, "noise_coordinates": total - kept,
            "fraction_excluding_ties": differ_decided / max(kept - tied, 1), "count_excluding_ties": differ_decided,
            "tie_coordinates": tied,
            "largest_relative_gradient_at_mismatch": largest, "mismatches_by_relative_gradient": by_size}


def evidence_mismatch(ev_a: dict, ev_b: dict, votes: dict, names) -> int:
    count = 0
    for name in names:
        a = ev_a.get(name, torch.ones(votes[name].shape, dtype=torch.bool))
        b = ev_b.get(name, torch.ones(votes[name].shape, dtype=torch.bool))
        count += int((a != b).sum())
    return count


def mismatched_tensors(votes_a: dict, votes_b: dict, names, relative: dict, top: int = 5) -> list:
    rows = []
    for name in names:
        bad = votes_a[name].to(torch.int32) != votes_b[name].to(torch.int32)
        if bad.any():
            rows.append((int((bad & (relative[name] > NOISE_RELATIVE)).sum()), int(bad.sum()), name))
    rows.sort(reverse=True)
    return [{"parameter": n, "mismatches": c, "excluding_noise": k} for k, c, n in rows[:top]]


def wait_for_idle(max_wait: float, threshold: float = 0.1, window: float = 2.0) -> float:
    """Wait (at most ``max_wait`` s) until other processes use under ``threshold`` of the cores for a window."""
    start = time.perf_counter()
    while max_wait > 0 and time.perf_counter() - start < max_wait:
        before = cpu_busy_seconds()
        time.sleep(window)
        after = cpu_busy_seconds()
        other = (after[0] - before[0]) - (after[1] - before[1])
        if other / (window * (os.cpu_count() or 1)) < threshold:
            break
    return time.perf_counter() - start


def measure(spec: dict, args, log) -> tuple[dict, dict | None]:
    """Run one method in a fresh child; while other processes took more than ``--max-contention`` of the CPU
    during the run, run it again (``--retries``) and keep the fastest run."""
    best, best_tensors, attempts = None, None, []
    for attempt in range(1 + args.retries):
        waited = wait_for_idle(args.wait_idle)
        figures, tensors = run_in_child(spec)
        if "error" in figures:
            return figures, None
        attempts.append({"seconds": round(figures["seconds"], 3), "waited_for_idle_s": round(waited, 1),
                         "other_processes_cpu_fraction": figures["other_processes_cpu_fraction"]})
        log(f"  {spec['model']}: {spec['method']} {figures['seconds']:.2f} s, peak RSS {figures['peak_rss_mb']:.0f} MB, "
            f"other processes {figures['other_processes_cpu_fraction']:.0%} of the CPU"
            f"{' (extrapolated)' if figures.get('extrapolated') else ''}")
        if best is None or figures["seconds"] < best["seconds"]:
            best, best_tensors = figures, tensors
        if figures["other_processes_cpu_fraction"] <= args.max_contention:
            break
    best["attempts"] = attempts
    return best, best_tensors


def bench_model(kind: str, args, log) -> dict:
    cap = args.authors_max_samples
    if cap is None and not args.quick:
        cap = DEFAULT_AUTHORS_CAP.get(kind)
    if cap is not None and cap >= args.n:
        cap = None
    spec = dict(model=kind, n=args.n, t=args.t, quick=args.quick, device=args.device, threads=args.threads,
                micro_batch_size=args.micro_batch_size or args.n, authors_max_samples=cap)
    info = {"device": args.device, "n_samples": args.n, "max_tokens": args.t,
            "micro_batch_size": spec["micro_batch_size"], "plain_step_batch_size": spec["micro_batch_size"],
            "authors_batch_size": min(AUTHORS_BATCH, args.n)}
    results, tensors = {}, {}
    for method in ("plain", "engine", "loop", "authors"):
        figures, saved = measure({**spec, "method": method}, args, log)
        results[method], tensors[method] = figures, saved
        for key, value in figures.pop("model_info", {}).items():
            info.setdefault(key, value)
        if "error" in figures:
            log(f"  {kind}: {method} FAILED: {figures['error']}\n{figures.get('traceback', '')}")
    info["methods"] = results
    if "n_parameters" not in info:
        info["goals_met"] = {}
        return info
    n_params = info["n_parameters"]
    names = list(tensors["loop"]["votes"]) if tensors.get("loop") else []
    ok = {m: "error" not in results[m] for m in results}
    if ok["engine"] and ok["authors"]:
        info["speedup_vs_research_method"] = results["authors"]["seconds"] / results["engine"]["seconds"]
        info["research_method_extrapolated"] = results["authors"]["extrapolated"]
    if ok["engine"] and ok["loop"]:
        info["speedup_vs_loop"] = results["loop"]["seconds"] / results["engine"]["seconds"]
    if ok["engine"] and ok["plain"]:
        info["time_over_floor"] = results["engine"]["seconds"] / results["plain"]["seconds"]
        info["floor_seconds"] = results["plain"]["seconds"]
    if ok["engine"]:
        info["engine_seconds"] = results["engine"]["seconds"]
        # the first call (untimed above): cold memory; on the same samples when N <= the micro-batch
        info["engine_first_call_seconds"] = results["engine"].get("first_call_seconds")
        info["engine_first_call_samples"] = results["engine"].get("first_call_samples")
        info["peak_rss_mb"] = results["engine"]["peak_rss_mb"]
    if ok["plain"]:
        info["plain_step_peak_rss_mb"] = results["plain"]["peak_rss_mb"]
        info["memory_bound_mb"] = 1.1 * (results["plain"]["peak_rss_mb"] + n_params / 2 ** 20)
        info["memory_bound_over_baseline_mb"] = 1.1 * (results["plain"]["peak_over_baseline_mb"] + n_params / 2 ** 20)
    if ok["engine"] and ok["loop"]:
        ref, eng = tensors["loop"], tensors["engine"]
        m = mismatch(eng["votes"], ref["votes"], names, ref["relative"], ref["ties"])
        info.update(mismatch_fraction=m["fraction"], mismatch_count=m["count"],
                    mismatch_fraction_excluding_noise=m["fraction_excluding_noise"],
                    mismatch_count_excluding_noise=m["count_excluding_noise"],
                    noise_coordinates=m["noise_coordinates"],
                    mismatch_fraction_excluding_ties=m["fraction_excluding_ties"],
                    mismatch_count_excluding_ties=m["count_excluding_ties"], tie_coordinates=m["tie_coordinates"],
                    tie_rule=f"for some sample, |g| <= m or ||g| - L| <= m, where m = {TIE_BAND:g} x |g - g'|, g' is the "
                             "same sample's gradient padded in a batch of two and L the noise limit "
                             f"({NOISE_FLOOR:g} x its max |g| in the tensor): fp32 rounding decides the vote",
                    largest_relative_gradient_at_mismatch=m["largest_relative_gradient_at_mismatch"],
                    mismatches_by_relative_gradient=m["mismatches_by_relative_gradient"],
                    mismatch_vote_difference_histogram=m["vote_difference_histogram"],
                    evidence_mismatch_count=evidence_mismatch(eng["evidence"], ref["evidence"], ref["votes"], names),
                    most_mismatched_parameters=mismatched_tensors(eng["votes"], ref["votes"], names, ref["relative"]))
        if ok["authors"] and tensors["authors"] is not None:
            a = mismatch(tensors["authors"]["votes"], ref["votes"], names, ref["relative"], ref["ties"])
            info["research_method_mismatch_fraction"] = a["fraction"]
            info["research_method_mismatch_fraction_excluding_noise"] = a["fraction_excluding_noise"]
            info["research_method_mismatch_note"] = (
                "the authors' method has no noise floor; the reference zeroes |g| <= 2^-20 x max|g| of the tensor "
                "per sample, so they differ on such small gradients (e.g. most of a tied LM head)")
    goals = {}
    if "speedup_vs_research_method" in info:
        goals["speedup_vs_research_method"] = info["speedup_vs_research_method"] >= GOALS["speedup_vs_research_method"]
    if "speedup_vs_loop" in info:
        goals["speedup_vs_loop"] = info["speedup_vs_loop"] >= GOALS["speedup_vs_loop"]
    if "time_over_floor" in info:
        goals["time_over_floor"] = info["time_over_floor"] <= GOALS["time_over_floor"]
    if "peak_rss_mb" in info and "memory_bound_mb" in info:
        goals["memory"] = info["peak_rss_mb"] <= info["memory_bound_mb"]
        goals["memory_over_baseline"] = (results["engine"]["peak_over_baseline_mb"]
                                         <= info["memory_bound_over_baseline_mb"])
    if "mismatch_fraction_excluding_ties" in info:
        goals["mismatch"] = info["mismatch_fraction_excluding_ties"] <= GOALS["mismatch_fraction_excluding_ties"]
    info["goals_met"] = goals
    return info


def table(report: dict) -> str:
    head = ("model", "params", "engine s", "1st call s", "authors s", "loop s", "floor s", "×authors", "×loop", "/floor",
            "peak MB", "plain MB", "bound MB", "mismatch", "excl. noise", "excl. ties", "other CPU")
    rows = [head]
    for kind, r in report["models"].items():
        m = r.get("methods", {})
        get = lambda method, key="seconds": m.get(method, {}).get(key)  # noqa: E731
        authors = fmt(get("authors"), ".1f") + ("*" if m.get("authors", {}).get("extrapolated") else "")
        rows.append((kind, f"{r['n_parameters'] / 1e6:.1f}M", fmt(get("engine"), ".2f"),
                     fmt(get("engine", "first_call_seconds"), ".2f"), authors,
                     fmt(get("loop"), ".2f"), fmt(get("plain"), ".2f"),
                     fmt(r.get("speedup_vs_research_method"), ".1f"), fmt(r.get("speedup_vs_loop"), ".2f"),
                     fmt(r.get("time_over_floor"), ".2f"), fmt(r.get("peak_rss_mb"), ".0f"),
                     fmt(r.get("plain_step_peak_rss_mb"), ".0f"), fmt(r.get("memory_bound_mb"), ".0f"),
                     fmt(r.get("mismatch_fraction"), ".2e"), fmt(r.get("mismatch_fraction_excluding_noise"), ".2e"),
                     fmt(r.get("mismatch_fraction_excluding_ties"), ".2e"),
                     fmt(max((v.get("other_processes_cpu_fraction", 0) for v in m.values()), default=None), ".0%")))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if any(r.get("research_method_extrapolated") for r in report["models"].values()):
        lines.append("* authors' method timed on a subset of the samples and extrapolated linearly")
    lines.append("engine s: after one untimed call on the first micro-batch (1st call s, cold memory); floor s: the "
                 "best of two plain steps")
    lines.append("other CPU: the largest share of the CPU that other processes took during one of the model's "
                 "measurements")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--quick", action="store_true", help="reduced models, N=8, T=32 (under 2 minutes)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of bert,t5,gpt2")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--n", type=int, help="number of samples N (default 32, quick 8)")
    parser.add_argument("--t", type=int, help="maximum tokens per sample T (default 128, quick 32)")
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores; quick: 1, as the tiny "
                                                    "models' ops are too small to gain from threads)")
    parser.add_argument("--micro-batch-size", type=int, help="the engine's micro-batch and the plain step's batch "
                                                             "(default: N, one batch)")
    parser.add_argument("--authors-max-samples", type=int,
                        help="time the authors' method on this many samples and extrapolate linearly "
                             f"(default: all; full-size runs cap {DEFAULT_AUTHORS_CAP})")
    parser.add_argument("--wait-idle", type=float, help="before each measurement, wait up to this many seconds "
                                                        "for other processes to leave the CPU (default 60, quick 0)")
    parser.add_argument("--max-contention", type=float, default=0.1,
                        help="re-run a measurement during which other processes took more than this fraction of "
                             "the CPU (default 0.1)")
    parser.add_argument("--retries", type=int, help="at most this many re-runs per measurement (default 1, quick 0)")
    args = parser.parse_args(argv)
    args.wait_idle = (0.0 if args.quick else 60.0) if args.wait_idle is None else args.wait_idle
    args.threads = args.threads or (1 if args.quick else os.cpu_count())
    args.retries = (0 if args.quick else 1) if args.retries is None else args.retries
    args.n = args.n or (8 if args.quick else 32)
    args.t = args.t or (32 if args.quick else 128)
    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {MODELS}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    report = {"benchmark": "votes", "device": args.device, "quick": args.quick, "N": args.n, "T": args.t,
              "threads": args.threads, "cpu_count": os.cpu_count(), "torch": torch.__version__,
              "transformers": transformers.__version__, "python": platform.python_version(),
              "platform": platform.platform(), "processor": processor(), "source": source_fingerprint("gradfix_hf/votes", "gradfix_hf_votes_sha256"),
              "cuda_device": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
              "loadavg_start": [round(x, 2) for x in os.getloadavg()], "goals": GOALS,
              "wait_idle_s": args.wait_idle, "max_contention": args.max_contention, "retries": args.retries,
              "authors_max_samples": args.authors_max_samples,
              "noise_rule": f"a coordinate is noise when every sample's |g| <= {NOISE_RELATIVE:g} x that sample's "
                            "largest |g| over the whole model",
              "models": {}}
    log(f"votes benchmark: N={args.n}, T={args.t}, device={args.device}, threads={args.threads}, "
        f"load {report['loadavg_start']}")
    for kind in kinds:
        report["models"][kind] = bench_model(kind, args, log)
    report["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["total_seconds"] = time.perf_counter() - started
    all_goals = [v for r in report["models"].values() for k, v in r["goals_met"].items() if k != "memory_over_baseline"]
    report["all_goals_met"] = bool(all_goals) and all(all_goals)
    print(table(report))
    for kind, r in report["models"].items():
        print(f"{kind}: goals met {r['goals_met']}")
    print(f"load average {report['loadavg_start']} -> {report['loadavg_end']}; total {report['total_seconds']:.0f} s")
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
