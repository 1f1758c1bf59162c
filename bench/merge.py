"""Benchmark of the streaming merge (stage 2) against mergekit's ``task_arithmetic``: wall time and peak RSS.

Measured in one run, on the same three checkpoints (one architecture, ``LlamaForCausalLM`` built from a config
with a seeded random init, fp32, saved as sharded safetensors): θ_A, θ_A^ft = θ_A + a small perturbation, θ_B.

* ``mergekit``   — ``mergekit-yaml`` with ``merge_method: task_arithmetic``, ``base_model: θ_A`` and θ_A^ft at
  weight 1 (writes θ_A + τ_A), ``dtype: float32``, ``--no-copy-tokenizer``, the same output shard size;
* ``gradfix``    — ``gradfix run`` (method ``gradfix``, mask ``gradfix``, α = 1) with a precomputed votes file:
  θ_B + m ⊙ τ_A, m from the target's gradient-sign votes (reads three checkpoints and the votes);
* ``task_arithmetic`` — ``gradfix run`` with ``method: task_arithmetic`` and target θ_A: the same output as
  mergekit (checked tensor by tensor), the like-for-like row;
* ``start-up floors`` — a process that only imports each tool's CLI modules and reads θ_A's config (which pulls
  in transformers' model code): the start-up cost both pay, for context.

Each measured command is a fresh process, started through a tiny launcher that forks and execs it: its wall time,
and its peak RSS from the kernel (``ru_maxrss`` of that child from ``os.wait4``; started straight from this large
process, the child's ``ru_maxrss`` would begin at this process's own high-water mark, which Linux carries across
exec). The anonymous / file-backed split of the RSS is sampled from ``/proc/<pid>/status`` every 50 ms. Each
command runs ``--repeats`` times, interleaved with the others; a run during which other processes took more than
``--max-contention`` of the CPU is re-run (``--retries``); the fastest time and the largest peak RSS are kept.
The votes file is computed once beforehand by ``gradfix votes`` (stage 1); its time is reported separately, not in
the comparison. The α sweep re-runs only stage 2 (``gradfix run --alpha A --votes V``, one process per α) for 10
values (``--cli-sweep``), and once more in one process through the Python API (``prepare`` once, then
``merge_to_folder`` per α); no gradient is computed in either (each report names the given votes file and the kept
fraction is the same for every α).

    python bench/merge.py --json bench/results/merge-cpu.json     # full size (Llama-like, 134 M parameters)
    python bench/merge.py --quick --json /tmp/merge-quick.json    # reduced size, under 2 minutes
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402
import yaml  # noqa: E402
from safetensors import safe_open  # noqa: E402

from gradfix_hf.quickstart.toy import word_tokenizer, write_jsonl  # noqa: E402
from machine import fmt, processor, source_fingerprint, write_json  # noqa: E402 (bench/ is on sys.path)

GOALS = {"time_ratio_vs_mergekit": 1.0, "rss_ratio_vs_mergekit": 1.0}
LABEL_WORDS = {0: "negative", 1: "positive"}
N_SPECIALS = 3  # the word tokenizer's gpt2 style: <|endoftext|> <unk> <pad>
ALPHAS = [round(0.1 * i, 1) for i in range(1, 11)]
SIZES = {
    # Llama-like, untied embeddings: 2·32000·768 + 12·(4·768² + 3·768·2048) + norms = 134 M parameters
    "full": dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                 num_attention_heads=12, num_key_value_heads=12, shard="200MB", mergekit_shard="200M"),
    "quick": dict(vocab_size=8000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=4, shard="8MB", mergekit_shard="8M"),
}
PERTURBATION = 1e-3  # θ_A^ft = θ_A + N(0, PERTURBATION²) per coordinate (Llama's init std is 0.02)


# ----------------------------------------------------------------------------------------------- checkpoints
def build_checkpoints(root: Path, size: dict, n_samples: int, log) -> dict:
    """θ_A, θ_A^ft, θ_B (sharded safetensors + word tokenizer) and a small labelled jsonl; returns sizes."""
    config = transformers.LlamaConfig(
        **{k: v for k, v in size.items() if k not in ("shard", "mergekit_shard")},
        max_position_embeddings=512, bos_token_id=0, eos_token_id=0, pad_token_id=2, tie_word_embeddings=False)
    words = [f"w{i}" for i in range(config.vocab_size - N_SPECIALS - len(LABEL_WORDS))] + list(LABEL_WORDS.values())
    tokenizer = word_tokenizer(words, style="gpt2")
    assert len(tokenizer) == config.vocab_size, (len(tokenizer), config.vocab_size)
    paths = {k: root / k for k in ("theta_A", "theta_A_ft", "theta_B")}
    info: dict = {}
    for name, seed in (("theta_A", 0), ("theta_B", 1)):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(config).float().eval()
        model.save_pretrained(paths[name], max_shard_size=size["shard"])
        tokenizer.save_pretrained(paths[name])
        if name == "theta_A":
            info["n_parameters"] = sum(p.numel() for p in model.parameters())
            info["n_parameter_tensors"] = len(list(model.parameters()))
            generator = torch.Generator().manual_seed(2)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=generator) * PERTURBATION)
            model.save_pretrained(paths["theta_A_ft"], max_shard_size=size["shard"])
            tokenizer.save_pretrained(paths["theta_A_ft"])
        del model
        log(f"  saved {name}" + (" and theta_A_ft" if name == "theta_A" else ""))
    info["checkpoint_bytes"] = {k: sum(f.stat().st_size for f in p.glob("*.safetensors")) for k, p in paths.items()}
    info["checkpoint_shards"] = {k: len(list(p.glob("*.safetensors"))) for k, p in paths.items()}
    info["config"] = {k: v for k, v in size.items() if k not in ("mergekit_shard",)}
    info["config"]["class"] = "LlamaForCausalLM"
    info["dtype"] = "float32"
    rows = [{"text": " ".join(words[(7 * i + j) % 200] for j in range(6)), "label": i % 2} for i in range(n_samples)]
    write_jsonl(root / "train.jsonl", rows)
    return {"paths": paths, "info": info, "train": root / "train.jsonl"}


def write_configs(root: Path, ckpt: dict, size: dict, votes: Path, n_samples: int) -> dict:
    """Recipes (votes, gradfix, task_arithmetic) and mergekit's YAML; every path absolute."""
    a, a_ft, b = (str(ckpt["paths"][k].resolve()) for k in ("theta_A", "theta_A_ft", "theta_B"))
    output = {"dtype": "float32", "max_shard_size": size["shard"]}
    data = {"path": str(ckpt["train"].resolve()), "samples_per_class": n_samples // 2, "seed": 0,
            "label_words": dict(LABEL_WORDS), "max_length": 32}
    recipes = {
        "votes": {"objective": "causal-lm", "models": {"source": a, "source_finetuned": a_ft, "target": b},
                  "data": data, "method": {"name": "gradfix", "mask": "gradfix", "alpha": 1.0}, "output": output},
        # stage 2 only: the votes file replaces the data section (no data set is loaded)
        "gradfix": {"objective": "causal-lm", "models": {"source": a, "source_finetuned": a_ft, "target": b},
                    "votes": str(votes.resolve()), "method": {"name": "gradfix", "mask": "gradfix", "alpha": 1.0},
                    "output": output},
        # like for like with mergekit: target = θ_A, so the output is θ_A + τ_A
        "task_arithmetic": {"objective": "causal-lm", "models": {"source": a, "source_finetuned": a_ft, "target": a},
                            "method": {"name": "task_arithmetic", "alpha": 1.0}, "output": output},
    }
    files = {}
    for name, recipe in recipes.items():
        files[name] = root / f"recipe-{name}.yaml"
        files[name].write_text(yaml.safe_dump(recipe, sort_keys=False))
    mergekit = {"merge_method": "task_arithmetic", "base_model": a,
                "models": [{"model": a_ft, "parameters": {"weight": 1.0}}], "dtype": "float32"}
    files["mergekit"] = root / "mergekit.yml"
    files["mergekit"].write_text(yaml.safe_dump(mergekit, sort_keys=False))
    return files


# ----------------------------------------------------------------------------------------------- measuring
def cpu_busy_seconds() -> float:
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)) / tick


def wait_for_idle(max_wait: float, threshold: float = 0.15, window: float = 2.0) -> float:
    """Wait (at most ``max_wait`` s) until the machine's busy CPU share stays under ``threshold`` for a window."""
    start = time.perf_counter()
    while max_wait > 0 and time.perf_counter() - start < max_wait:
        before = cpu_busy_seconds()
        time.sleep(window)
        if (cpu_busy_seconds() - before) / (window * (os.cpu_count() or 1)) < threshold:
            break
    return time.perf_counter() - start


# A tiny launcher process forks and execs the measured command and reports that child's rusage. Started from
# this (large) process directly, the child's ru_maxrss would start at this process's own high-water mark: Linux
# carries the pre-exec memory's peak into ru_maxrss at exec (and subprocess uses vfork, sharing our memory). The
# launcher is a bare interpreter (~10 MB), so the measured figure is the command's own peak.
LAUNCHER = r"""
import json, os, sys, threading, time
cmd, result_path = json.loads(sys.argv[1]), sys.argv[2]
peak = {"VmHWM": 0, "RssAnon": 0, "RssFile": 0}
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
running = True
def sample():
    while running:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    key = line.split(":", 1)[0]
                    if key in peak:
                        peak[key] = max(peak[key], int(line.split()[1]))
        except (OSError, ValueError, IndexError):
            return
        time.sleep(0.05)
thread = threading.Thread(target=sample, daemon=True)
thread.start()
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
running = False
with open(result_path, "w") as f:
    json.dump({"seconds": wall, "exit_code": os.waitstatus_to_exitcode(status), "ru_maxrss_kb": usage.ru_maxrss,
               "cpu_seconds": usage.ru_utime + usage.ru_stime, "user_seconds": usage.ru_utime,
               "system_seconds": usage.ru_stime, "major_page_faults": usage.ru_majflt, "sampled_kb": peak}, f)
"""


def run_measured(cmd: list[str], env: dict, log_file: Path) -> dict:
    """Run ``cmd`` in a fresh process (through the launcher): wall and CPU seconds, peak RSS (``ru_maxrss`` of
    that process) and the largest anonymous / file-backed RSS sampled every 50 ms."""
    load_before = os.getloadavg()
    busy_before = cpu_busy_seconds()
    result_path = log_file.with_suffix(".rusage.json")
    with open(log_file, "w") as out:
        start = time.perf_counter()
        code = subprocess.call([sys.executable, "-c", LAUNCHER, json.dumps(cmd), str(result_path)], stdout=out,
                               stderr=subprocess.STDOUT, env=env)
        wall_outer = time.perf_counter() - start
    busy = cpu_busy_seconds() - busy_before
    if code != 0 or not result_path.is_file():
        return {"error": f"launcher exit code {code}; log: " + log_file.read_text()[-3000:]}
    r = json.loads(result_path.read_text())
    wall, own_cpu = r["seconds"], r["cpu_seconds"]
    result = {"seconds": round(wall, 3), "cpu_seconds": round(own_cpu, 3), "user_seconds": round(r["user_seconds"], 3),
              "system_seconds": round(r["system_seconds"], 3), "peak_rss_mb": round(r["ru_maxrss_kb"] / 1024, 1),
              "sampled_peak_rss_anon_mb": round(r["sampled_kb"]["RssAnon"] / 1024, 1),
              "sampled_peak_rss_file_mb": round(r["sampled_kb"]["RssFile"] / 1024, 1),
              "major_page_faults": r["major_page_faults"], "exit_code": r["exit_code"],
              # CPU time other processes took meanwhile, as a share of all cores' time
              "other_processes_cpu_fraction": round(max(0.0, busy - own_cpu) / (wall_outer * (os.cpu_count() or 1)), 3),
              "loadavg_before": [round(x, 2) for x in load_before],
              "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
    if r["exit_code"] != 0:
        result["error"] = f"exit code {r['exit_code']}; log: " + log_file.read_text()[-3000:]
    return result


def measure(name: str, cmd: list[str], env: dict, args, workdir: Path, log, before=None) -> dict:
    """Run ``cmd`` ``--repeats`` times (each after ``before()``, e.g. removing the output folder), re-running a
    run during which other processes took more than ``--max-contention`` of the CPU (``--retries``). Summary:
    the fastest run's time, the largest peak RSS over the runs."""
    runs = []
    for repeat in range(args.repeats):
        for attempt in range(1 + args.retries):
            if before:
                before()
            waited = wait_for_idle(args.wait_idle)
            figures = run_measured(cmd, env, workdir / f"log-{name}-{repeat}-{attempt}.txt")
            figures["waited_for_idle_s"] = round(waited, 1)
            if "error" in figures:
                log(f"  {name}: FAILED {figures['error']}")
                return {"error": figures["error"], "command": cmd}
            log(f"  {name}: {figures['seconds']:.2f} s, peak RSS {figures['peak_rss_mb']:.0f} MB "
                f"(anon {figures['sampled_peak_rss_anon_mb']:.0f}, file {figures['sampled_peak_rss_file_mb']:.0f}), "
                f"other processes {figures['other_processes_cpu_fraction']:.0%} of the CPU")
            runs.append(figures)
            if figures["other_processes_cpu_fraction"] <= args.max_contention:
                break
    best = min(runs, key=lambda r: r["seconds"])
    return {"seconds": best["seconds"], "cpu_seconds": best["cpu_seconds"],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "sampled_peak_rss_anon_mb": max(r["sampled_peak_rss_anon_mb"] for r in runs),
            "sampled_peak_rss_file_mb": max(r["sampled_peak_rss_file_mb"] for r in runs),
            "other_processes_cpu_fraction": best["other_processes_cpu_fraction"],
            "command": " ".join(cmd), "runs": runs}


# ----------------------------------------------------------------------------------------------- checking
def open_folder(folder: Path) -> dict:
    """tensor name -> safe_open handle of a (sharded) safetensors folder."""
    index = folder / "model.safetensors.index.json"
    files = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file()
             else ["model.safetensors"])
    where = {}
    for name in files:
        handle = safe_open(str(folder / name), framework="pt")
        for key in handle.keys():
            where[key] = handle
    return where


def output_facts(folder: Path) -> dict:
    files = sorted(folder.glob("*.safetensors"))
    return {"shards": len(files), "bytes": sum(f.stat().st_size for f in files)}


def compare_outputs(ours: Path, theirs: Path) -> dict:
    """Every tensor of our task_arithmetic output against mergekit's: same names, dtypes, values."""
    a, b = open_folder(ours), open_folder(theirs)
    equal, max_diff, dtypes = 0, 0.0, set()
    for name in sorted(set(a) & set(b)):
        x, y = a[name].get_tensor(name), b[name].get_tensor(name)
        dtypes.add((str(x.dtype), str(y.dtype)))
        if x.shape == y.shape and torch.equal(x, y):
            equal += 1
        elif x.shape == y.shape:
            max_diff = max(max_diff, float((x.double() - y.double()).abs().max()))
        else:
            max_diff = float("inf")
    return {"tensors_ours": len(a), "tensors_mergekit": len(b), "same_names": set(a) == set(b),
            "tensors_bitwise_equal": equal, "max_abs_difference": max_diff,
            "dtypes": sorted(f"{x} vs {y}" for x, y in dtypes),
            "all_equal": set(a) == set(b) and equal == len(a)}


def check_formulas(ckpt: dict, votes_path: Path, ta_out: Path, gradfix_out: Path, names: list[str]) -> dict:
    """A few tensors recomputed here: task_arithmetic = θ_A + τ_A; gradfix = θ_B + 1{sign τ = sign v ≠ 0}⊙τ_A."""
    a, a_ft, b = (open_folder(ckpt["paths"][k]) for k in ("theta_A", "theta_A_ft", "theta_B"))
    ta, gf = open_folder(ta_out), open_folder(gradfix_out)
    votes = safe_open(str(votes_path), framework="pt")
    out = {"tensors_checked": names, "task_arithmetic_equal": True, "gradfix_equal": True, "gradfix_kept_fraction": {}}
    for name in names:
        base, tuned, target = a[name].get_tensor(name), a_ft[name].get_tensor(name), b[name].get_tensor(name)
        tau = tuned - base
        out["task_arithmetic_equal"] &= torch.equal(ta[name].get_tensor(name), base + tau)
        v = votes.get_tensor(name)
        keep = (torch.sign(tau).to(torch.int8) == torch.sign(v).to(torch.int8)) & (v != 0)
        expected = target + torch.where(keep, tau, torch.zeros_like(tau))
        out["gradfix_equal"] &= torch.equal(gf[name].get_tensor(name), expected)
        out["gradfix_kept_fraction"][name] = round(float(keep.float().mean()), 4)
    out["task_arithmetic_equal"], out["gradfix_equal"] = bool(out["task_arithmetic_equal"]), bool(out["gradfix_equal"])
    return out


API_SWEEP = r"""
import json, sys, time
t0 = time.perf_counter()
from gradfix_hf.recipe import Recipe
from gradfix_hf.transport import prepare, load_votes_for
from gradfix_hf.merge.streaming import MergeJob, merge_to_folder
from pathlib import Path
recipe_path, votes_path, out_root, alphas = sys.argv[1], sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4])
t1 = time.perf_counter()
recipe = Recipe.from_yaml(recipe_path)
prepared = prepare(recipe)
t2 = time.perf_counter()
votes = load_votes_for(prepared, votes_path)
t3 = time.perf_counter()
job = MergeJob([prepared.plan], [votes], recipe.method.method, recipe.method.parameters, 1.0)
per_alpha = []
for alpha in alphas:
    folder = out_root / f"alpha-{alpha}"
    folder.mkdir(parents=True, exist_ok=True)
    s = time.perf_counter()
    merge_to_folder(job.replace(alpha=alpha), folder, dtype=None, max_shard_size=recipe.output.max_shard_size)
    per_alpha.append(round(time.perf_counter() - s, 3))
    import shutil; shutil.rmtree(folder)
print("RESULT " + json.dumps({"import_s": round(t1 - t0, 3), "prepare_s": round(t2 - t1, 3),
                              "load_votes_s": round(t3 - t2, 3), "merge_per_alpha_s": per_alpha}))
"""


# ----------------------------------------------------------------------------------------------- the run
def bench(args, log) -> dict:
    size = SIZES["quick" if args.quick else "full"]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gradfix-bench-merge-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_DATASETS_CACHE": str(workdir / "hf-datasets-cache"), "TRANSFORMERS_VERBOSITY": "error"}
    py = sys.executable
    report: dict = {"workdir": str(workdir)}

    start = time.perf_counter()
    ckpt = build_checkpoints(workdir / "models", size, args.samples, log)
    report["build_seconds"] = round(time.perf_counter() - start, 1)
    report["sizes"] = ckpt["info"]
    info = ckpt["info"]
    log(f"  {info['n_parameters'] / 1e6:.1f} M parameters, {info['checkpoint_bytes']['theta_A'] / 1e6:.0f} MB and "
        f"{info['checkpoint_shards']['theta_A']} shards per checkpoint ({report['build_seconds']:.0f} s)")

    votes_path = workdir / "votes.safetensors"
    files = write_configs(workdir, ckpt, size, votes_path, args.samples)
    report["recipes"] = {k: yaml.safe_load(v.read_text()) for k, v in files.items()}

    # stage 1, once (not part of the comparison)
    votes_cmd = [py, "-m", "gradfix_hf", "votes", str(files["votes"]), "-o", str(votes_path), "--no-progress",
                 "--overwrite"]
    report["votes"] = run_measured(votes_cmd, env, workdir / "log-votes.txt")
    report["votes"]["command"] = " ".join(votes_cmd)
    report["votes"]["n_samples"] = args.samples
    if "error" in report["votes"]:
        raise RuntimeError(f"gradfix votes failed: {report['votes']['error']}")
    report["votes"]["file_bytes"] = votes_path.stat().st_size
    log(f"  votes (stage 1, N={args.samples}): {report['votes']['seconds']:.1f} s, peak RSS "
        f"{report['votes']['peak_rss_mb']:.0f} MB")

    outs = {k: workdir / f"out-{k}" for k in ("mergekit", "gradfix", "task_arithmetic")}
    a_path = str(ckpt["paths"]["theta_A"].resolve())

    def clear(folder: Path):
        return lambda: shutil.rmtree(folder, ignore_errors=True)

    commands = {
        # start-up floors: each tool's imports plus reading θ_A's config (which pulls in transformers' model code,
        # imported lazily by gradfix_hf while it prepares and eagerly by mergekit)
        "startup_floor_mergekit": [py, "-c", "import sys, mergekit.merge, mergekit.scripts.run_yaml, transformers; "
                                   "transformers.AutoConfig.from_pretrained(sys.argv[1])", a_path],
        "startup_floor_gradfix": [py, "-c", "import sys, gradfix_hf.cli, gradfix_hf.transport, transformers; "
                                  "transformers.AutoConfig.from_pretrained(sys.argv[1])", a_path],
        "mergekit": [py, "-m", "mergekit.scripts.run_yaml", str(files["mergekit"]), str(outs["mergekit"]),
                     "--no-copy-tokenizer", "--out-shard-size", size["mergekit_shard"]],
        "gradfix": [py, "-m", "gradfix_hf", "run", str(files["gradfix"]), "--votes", str(votes_path), "-o",
                    str(outs["gradfix"]), "--no-progress"],
        "task_arithmetic": [py, "-m", "gradfix_hf", "run", str(files["task_arithmetic"]), "-o",
                            str(outs["task_arithmetic"]), "--no-progress"],
    }
    results = {}
    # interleaved: each repeat measures every command once, so slow phases of the machine hit all alike
    repeats, args.repeats = args.repeats, 1
    for repeat in range(repeats):
        for name, cmd in commands.items():
            figures = measure(name, cmd, env, args, workdir, log, before=clear(outs[name]) if name in outs else None)
            if "error" in figures:
                results[name] = figures
                continue
            if name in results and "runs" in results[name]:
                prev = results[name]
                runs = prev["runs"] + figures["runs"]
                fastest = min(runs, key=lambda r: r["seconds"])
                figures = {**figures, "runs": runs, "seconds": fastest["seconds"],
                           "cpu_seconds": fastest["cpu_seconds"],
                           "other_processes_cpu_fraction": fastest["other_processes_cpu_fraction"],
                           **{k: max(prev[k], figures[k]) for k in ("peak_rss_mb", "sampled_peak_rss_anon_mb",
                                                                    "sampled_peak_rss_file_mb")}}
            results[name] = figures
    args.repeats = repeats
    for name, folder in outs.items():
        if folder.is_dir():
            results[name]["output"] = output_facts(folder)
    report["methods"] = results

    ok = {k: "error" not in v for k, v in results.items()}
    if ok["mergekit"] and ok["task_arithmetic"]:
        report["task_arithmetic_vs_mergekit_output"] = compare_outputs(outs["task_arithmetic"], outs["mergekit"])
    if ok["gradfix"] and ok["task_arithmetic"]:
        layers = size["num_hidden_layers"]
        names = ["model.embed_tokens.weight", f"model.layers.{layers - 1}.mlp.down_proj.weight",
                 "model.layers.0.self_attn.q_proj.weight", "model.norm.weight", "lm_head.weight"]
        report["formula_check"] = check_formulas(ckpt, votes_path, outs["task_arithmetic"], outs["gradfix"], names)
        ours = read_gradfix_report(outs["gradfix"])
        report["gradfix_report"] = {k: v for k, v in ours.items() if k in ("totals", "votes", "method", "seconds")}

    # α sweep, CLI: stage 2 only, one process per α, with the same votes file
    if ok["gradfix"] and args.cli_sweep > 0:
        sweep_root = workdir / "sweep"
        per_alpha, kept, files_used, errors = [], set(), set(), []
        started = time.perf_counter()
        n = max(1, min(args.cli_sweep, len(ALPHAS)))
        cli_alphas = [ALPHAS[round((i + 1) * len(ALPHAS) / n) - 1] for i in range(n)]
        for alpha in cli_alphas:
            folder = sweep_root / f"alpha-{alpha}"
            cmd = [py, "-m", "gradfix_hf", "run", str(files["gradfix"]), "--votes", str(votes_path), "--alpha",
                   str(alpha), "-o", str(folder), "--no-progress"]
            wait_for_idle(min(args.wait_idle, 60.0))
            figures = run_measured(cmd, env, workdir / f"log-sweep-{alpha}.txt")
            if "error" in figures:
                errors.append(figures["error"])
                break
            rep = read_gradfix_report(folder)
            kept.add(round(rep["totals"]["kept_fraction"], 12))
            files_used.add(rep["votes"]["file"] if rep.get("votes") else None)
            per_alpha.append({"alpha": alpha, "seconds": figures["seconds"], "peak_rss_mb": figures["peak_rss_mb"],
                              "other_processes_cpu_fraction": figures["other_processes_cpu_fraction"],
                              "report_alpha": rep["method"]["alpha"]})
            shutil.rmtree(folder)
        total = time.perf_counter() - started
        report["alpha_sweep_cli"] = {
            "alphas": cli_alphas, "total_seconds": round(sum(r["seconds"] for r in per_alpha), 2),
            "wall_seconds_including_idle_waits": round(total, 2), "per_alpha": per_alpha, "errors": errors,
            "mean_seconds_per_alpha": round(sum(r["seconds"] for r in per_alpha) / max(len(per_alpha), 1), 3),
            "per_alpha_over_one_gradfix_run": round(sum(r["seconds"] for r in per_alpha) / max(len(per_alpha), 1)
                                                    / results["gradfix"]["seconds"], 3),
            "votes_files_used": sorted(str(f) for f in files_used),
            "only_the_given_votes_file_used": files_used == {str(votes_path)},
            "kept_fraction_same_for_every_alpha": len(kept) == 1,
            "command": "gradfix run RECIPE --votes VOTES --alpha A -o OUT --no-progress"}
        log(f"  α sweep (CLI, {len(per_alpha)} values, one process each): "
            f"{report['alpha_sweep_cli']['total_seconds']:.1f} s total, "
            f"{report['alpha_sweep_cli']['mean_seconds_per_alpha']:.2f} s per α")
    if ok["gradfix"]:
        # the 10-value sweep in one process: prepare and load the votes once, then one merge_to_folder per α
        cmd = [py, "-c", API_SWEEP, str(files["gradfix"]), str(votes_path), str(workdir / "sweep-api"),
               json.dumps(ALPHAS)]
        wait_for_idle(min(args.wait_idle, 60.0))
        figures = run_measured(cmd, env, workdir / "log-sweep-api.txt")
        if "error" not in figures:
            line = next(l for l in (workdir / "log-sweep-api.txt").read_text().splitlines() if l.startswith("RESULT "))
            figures.update(json.loads(line[len("RESULT "):]))
            figures["total_merge_seconds"] = round(sum(figures["merge_per_alpha_s"]), 2)
            log(f"  α sweep (one process): {figures['seconds']:.1f} s total; prepare {figures['prepare_s']:.2f} s, "
                f"votes {figures['load_votes_s']:.2f} s, merge per α {min(figures['merge_per_alpha_s']):.2f}-"
                f"{max(figures['merge_per_alpha_s']):.2f} s")
        report["alpha_sweep_api"] = figures

    # ratios (ours / mergekit)
    if ok["mergekit"]:
        mk = results["mergekit"]
        for name, prefix in (("gradfix", ""), ("task_arithmetic", "task_arithmetic_")):
            if ok[name]:
                report[f"{prefix}time_ratio_vs_mergekit"] = round(results[name]["seconds"] / mk["seconds"], 3)
                report[f"{prefix}rss_ratio_vs_mergekit"] = round(results[name]["peak_rss_mb"] / mk["peak_rss_mb"], 3)
                report[f"{prefix}cpu_time_ratio_vs_mergekit"] = round(
                    results[name]["cpu_seconds"] / mk["cpu_seconds"], 3)
        if ok["startup_floor_mergekit"] and ok["gradfix"] and ok["startup_floor_gradfix"]:
            # the same ratios with each tool's start-up (imports + one config) time and RSS taken out
            fm, fg = results["startup_floor_mergekit"], results["startup_floor_gradfix"]
            report["time_ratio_vs_mergekit_above_startup_floor"] = round(
                (results["gradfix"]["seconds"] - fg["seconds"]) / max(mk["seconds"] - fm["seconds"], 1e-9), 3)
            report["rss_ratio_vs_mergekit_above_startup_floor"] = round(
                (results["gradfix"]["peak_rss_mb"] - fg["peak_rss_mb"])
                / max(mk["peak_rss_mb"] - fm["peak_rss_mb"], 1e-9), 3)
    report["goals_met"] = {k: report[k] <= v for k, v in GOALS.items() if k in report}
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


def read_gradfix_report(folder: Path) -> dict:
    return json.loads((folder / "gradfix_report.json").read_text())


def table(report: dict) -> str:
    m = report["methods"]
    mk = m.get("mergekit", {})
    head = ("run", "seconds", "× mergekit", "CPU s", "peak RSS MB", "× mergekit", "anon MB", "file MB", "other CPU")
    rows = [head]
    for name, label in (("mergekit", "mergekit task_arithmetic"), ("gradfix", "gradfix (mask gradfix, α=1)"),
                        ("task_arithmetic", "gradfix_hf task_arithmetic"),
                        ("startup_floor_mergekit", "start-up only: mergekit"),
                        ("startup_floor_gradfix", "start-up only: gradfix_hf")):
        r = m.get(name, {})
        if "error" in r or not r:
            rows.append((label, "failed", "", "", "", "", "", "", ""))
            continue
        ratio = lambda key: r[key] / mk[key] if mk.get(key) else None  # noqa: E731
        rows.append((label, fmt(r["seconds"], ".2f"), fmt(ratio("seconds"), ".2f"), fmt(r["cpu_seconds"], ".1f"),
                     fmt(r["peak_rss_mb"], ".0f"), fmt(ratio("peak_rss_mb"), ".2f"),
                     fmt(r["sampled_peak_rss_anon_mb"], ".0f"), fmt(r["sampled_peak_rss_file_mb"], ".0f"),
                     fmt(r["other_processes_cpu_fraction"], ".0%")))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    lines = ["  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    s = report["sizes"]
    lines.append(f"sizes: {s['n_parameters'] / 1e6:.1f} M parameters ({s['n_parameter_tensors']} tensors), fp32, "
                 f"{s['checkpoint_bytes']['theta_A'] / 1e6:.0f} MB in {s['checkpoint_shards']['theta_A']} shards per "
                 "checkpoint")
    v = report["votes"]
    lines.append(f"votes (stage 1, once, not compared): {v['seconds']:.1f} s, peak RSS {v['peak_rss_mb']:.0f} MB, "
                 f"N={v['n_samples']}")
    sw, api = report.get("alpha_sweep_cli"), report.get("alpha_sweep_api")
    if sw:
        lines.append(f"α sweep, {len(sw['alphas'])} values, CLI (stage 2 only): {sw['total_seconds']:.1f} s total, "
                     f"{sw['mean_seconds_per_alpha']:.2f} s per α ({sw['per_alpha_over_one_gradfix_run']:.2f}× one "
                     f"gradfix run); only the given votes file used: {sw['only_the_given_votes_file_used']}; "
                     f"same kept fraction for every α: {sw['kept_fraction_same_for_every_alpha']}")
    if api and "error" not in api:
        lines.append(f"α sweep, 10 values, one process (Python API): {api['seconds']:.1f} s total = import "
                     f"{api['import_s']:.1f} + prepare {api['prepare_s']:.1f} + votes {api['load_votes_s']:.1f} + "
                     f"merges {api['total_merge_seconds']:.1f} ({min(api['merge_per_alpha_s']):.2f}-"
                     f"{max(api['merge_per_alpha_s']):.2f} s per α)")
    c = report.get("task_arithmetic_vs_mergekit_output")
    if c:
        lines.append(f"task_arithmetic output == mergekit output: {c['all_equal']} ({c['tensors_bitwise_equal']}/"
                     f"{c['tensors_ours']} tensors bitwise equal, max |diff| {c['max_abs_difference']:g})")
    f = report.get("formula_check")
    if f:
        lines.append(f"recomputed here on {len(f['tensors_checked'])} tensors: task_arithmetic "
                     f"{f['task_arithmetic_equal']}, gradfix {f['gradfix_equal']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--quick", action="store_true", help="reduced model (7 M parameters), under 2 minutes")
    parser.add_argument("--samples", type=int, default=8, help="labelled samples for the votes (default 8)")
    parser.add_argument("--repeats", type=int, help="measure each command this many times, interleaved; the "
                                                    "fastest time and largest peak RSS are kept (default 2, quick 1)")
    parser.add_argument("--wait-idle", type=float, help="before each measurement, wait up to this many seconds "
                                                        "for other processes to leave the CPU (default 30, quick 0)")
    parser.add_argument("--max-contention", type=float, default=0.1,
                        help="re-run a measurement during which other processes took more than this share of "
                             "the CPU (default 0.1)")
    parser.add_argument("--retries", type=int, help="at most this many re-runs per measurement (default 1, quick 0)")
    parser.add_argument("--cli-sweep", type=int, help="α values of the sweep run through the CLI, one process each "
                                                       "(default 10, quick 2; 0 skips it). The 10-value sweep in one "
                                                       "process (Python API) always runs")
    parser.add_argument("--workdir", help="folder for checkpoints and outputs (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick else 2)
    args.cli_sweep = (2 if args.quick else 10) if args.cli_sweep is None else args.cli_sweep
    args.wait_idle = (0.0 if args.quick else 30.0) if args.wait_idle is None else args.wait_idle
    args.retries = (0 if args.quick else 1) if args.retries is None else args.retries

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    import mergekit  # noqa: F401  (fail early when it is missing)
    from importlib.metadata import version

    started = time.perf_counter()
    report = {"benchmark": "merge", "quick": args.quick, "goals": GOALS, "cpu_count": os.cpu_count(),
              "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
              "transformers": transformers.__version__, "mergekit": version("mergekit"),
              "safetensors": version("safetensors"), "python": platform.python_version(),
              "platform": platform.platform(), "processor": processor(), "source": source_fingerprint("gradfix_hf", "gradfix_hf_sha256"),
              "memory_total_mb": _mem_total_mb(), "loadavg_start": [round(x, 2) for x in os.getloadavg()],
              "repeats": args.repeats, "wait_idle_s": args.wait_idle, "max_contention": args.max_contention,
              "retries": args.retries}
    log(f"merge benchmark ({'quick' if args.quick else 'full'}), load {report['loadavg_start']}")
    report.update(bench(args, log))
    report["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    print(table(report))
    print(f"ours (gradfix) / mergekit: time {report.get('time_ratio_vs_mergekit')}×, peak RSS "
          f"{report.get('rss_ratio_vs_mergekit')}×; goals (≤ 1.0×) met: {report['goals_met']}")
    print(f"load average {report['loadavg_start']} -> {report['loadavg_end']}; total {report['total_seconds']:.0f} s")
    if args.json:
        write_json(args.json, report)
    return 0


def _mem_total_mb() -> float:
    try:
        with open("/proc/meminfo") as f:
            return round(int(f.readline().split()[1]) / 1024, 0)
    except (OSError, ValueError, IndexError):
        return float("nan")


if __name__ == "__main__":
    sys.exit(main())
