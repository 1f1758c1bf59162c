"""The ``gradfix`` command: run a recipe, compute votes, inspect votes files and outputs, run the quickstart.

The top of the layers (docs/architecture.md): each command imports the machinery it runs when it runs, so that
``--help``, ``--version`` and input errors need none of it: this module imports only the errors, the version and
the launcher's environment at the top; a command reads its recipe (torch, for the method registry), checks its
outputs and the Hub token, and only then imports transformers and the rest.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from .errors import GradFixError
from .runtime.launch import launched_rank
from .version import __version__

EPILOG = ("Recipes are YAML files: examples in recipes/, every key in docs/usage.md (section \"Recipes\"). "
          "Paper: https://arxiv.org/abs/2510.09658")


def _add_recipe_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="path to a YAML recipe")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow pickle (.bin) weights, loaded with torch.load(weights_only=True)")
    parser.add_argument("--no-progress", action="store_true",
                        help="hide every progress bar (gradfix's, and those of datasets, the Hub and transformers)")
    parser.add_argument("--vote-engine", choices=("auto", "batched", "reference"),
                        help="per-sample gradient engine: batched (one backward per micro-batch), reference (the "
                             "exact one-sample loop) or auto (batched unless the objective is a user callable)")
    parser.add_argument("--vote-batch-size", type=int, help="micro-batch size of the batched engine (default 16)")
    parser.add_argument("--vote-dtype", choices=("auto", "float32", "bfloat16", "float16"),
                        help="θ_B's dtype during the vote (auto: its stored dtype on a GPU, float32 on a CPU)")
    parser.add_argument("--vote-sharding", choices=("auto", "samples", "fsdp"), help="several processes: replicate "
                        "θ_B (samples) or shard it with FSDP2 (fsdp; auto: under accelerate launch --use_fsdp)")
    parser.add_argument("--vote-shard-size", type=int, help="processes per copy of θ_B (fsdp; default: a node)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradfix", epilog=EPILOG,
        description="GradFix: transport a fine-tuning's task vector onto a new pre-trained model "
                    "with gradient-sign masks computed from a few labelled samples.")
    parser.add_argument("--version", action="version", version=f"gradfix_hf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a recipe: votes, mask, streaming merge, output folder",
                         description="Run a recipe end to end and write the transported model folder.")
    _add_recipe_overrides(run)
    run.add_argument("-o", "--output", help="output folder (default: the recipe's output.path; one of the two is "
                                            "required, except with --dry-run)")
    run.add_argument("--dry-run", action="store_true",
                     help="check the recipe, models and data without computing anything or writing")
    run.add_argument("--votes", help="use this votes file instead of computing votes")
    run.add_argument("--alpha", type=float, help="override method.alpha")
    run.add_argument("--mask", help="override method.mask (a mask variant: see `gradfix methods`)")
    run.add_argument("--force", action="store_true",
                     help="allow alpha outside (0, 1], and a votes file recorded for another target")
    run.add_argument("--overwrite", action="store_true",
                     help="replace a previous gradfix output folder at that path (never anything else)")
    run.add_argument("--push-to-hub", metavar="ORG/NAME",
                     help="then push the output folder to this Hub repo in one commit (created if needed; the token "
                          "comes from HF_TOKEN or `hf auth login` and is checked before the run)")
    run.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    run.add_argument("--as-lora", type=int, metavar="RANK",
                     help="write a LoRA adapter for the target (truncated SVD of each masked delta, at most this "
                          "rank) instead of full weights; the report gives each module's reconstruction error")
    run.add_argument("--lora-energy", type=float, metavar="E",
                     help="LoRA adapter rank per module: the smallest keeping this fraction (0, 1] of the delta's "
                          "squared norm (with --as-lora: capped at RANK)")

    votes = sub.add_parser("votes", help="compute the votes file of a recipe (stage 1 only)",
                           description="Compute per-sample gradient-sign votes on the target and write them.")
    _add_recipe_overrides(votes)
    votes.add_argument("-o", "--output", required=True, help="votes file to write (.safetensors)")
    votes.add_argument("--task", help="with a tasks list: the task (name) whose votes to compute")
    votes.add_argument("--overwrite", action="store_true", help="replace a previous votes file at that path")

    push = sub.add_parser("push", help="push an output folder to the Hugging Face Hub in one commit",
                          description="Create the Hub repo if needed and upload a finished output folder (weights, "
                                      "config, tokenizer, model card, report, recipe) in one commit. The token "
                                      "comes from HF_TOKEN or `hf auth login`.")
    push.add_argument("output", help="a gradfix output folder")
    push.add_argument("repo_id", metavar="ORG/NAME", help="the Hub model repo")
    push.add_argument("--private", action="store_true", help="create the repo private (if it does not exist)")
    push.add_argument("--revision", metavar="BRANCH", help="push to this branch (created from main if needed)")
    push.add_argument("--commit-message", help="commit title (default: method, models, α, N, kept fraction)")

    sweep = sub.add_parser("sweep", help="choose α on the validation split and report it on the test split",
                           description="Score θ_B, naive θ_B + α·τ_A, the recipe's method (and the oracle) over an "
                                       "α grid on evaluation.split, pick α per method there, report it on "
                                       "evaluation.test_split. Votes are computed once; no gradients per α.")
    _add_recipe_overrides(sweep)
    sweep.add_argument("--alphas", help="comma-separated α grid (default: evaluation.alphas or 0.1,0.2,...,1.0)")
    sweep.add_argument("--votes", help="use this votes file instead of computing votes")
    sweep.add_argument("--force", action="store_true",
                       help="allow alpha outside (0, 1], and a votes file recorded for another target")
    sweep.add_argument("--json", dest="json_path", help="also write the result as JSON to this file")
    sweep.add_argument("--markdown", help="also write the table as markdown to this file")
    sweep.add_argument("--overwrite", action="store_true",
                       help="replace previous sweep outputs (--json/--markdown/--plot files) at those paths")
    sweep.add_argument("--plot", metavar="PATH.png",
                       help="also draw the validation score against α per method, with the zero-shot and few-shot "
                            "baselines, as a PNG (needs matplotlib: pip install 'gradfix_hf[plot]')")

    methods = sub.add_parser("methods", help="list the merge methods and auto, their parameters and the mask variants",
                             description="List every method.name a recipe may give — the registered merge methods "
                                         "and auto (the validation split chooses) — with their parameters and "
                                         "defaults, and the mask variants.")
    methods.add_argument("--json", action="store_true", help="print JSON")

    inspect = sub.add_parser("inspect", help="summarise a votes file or an output folder",
                             description="Print the metadata and statistics of a votes file or output folder.")
    inspect.add_argument("path", help="a votes .safetensors file or a gradfix output folder")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.add_argument("--top", type=int, default=10, help="tensors to list (default 10)")

    quick = sub.add_parser("quickstart", help="build the tiny embedded models and data, then run the quickstart",
                           description="Build a tiny source/fine-tune/target trio and a toy task offline, run "
                                       "the quickstart recipe and print held-out scores.")
    quick.add_argument("--workdir", default="gradfix-quickstart", help="folder for models, data and output")
    quick.add_argument("--chat", action="store_true",
                       help="a tiny chat model pair instead (Llama architecture, ChatML template, full and LoRA chat "
                            "fine-tunes, in WORKDIR/chat/), and recipes/sft-chat.yaml on it (objective: sft)")
    quick.add_argument("--no-progress", action="store_true", help="hide every progress bar")
    return parser


def _load_recipe(args: argparse.Namespace):
    """The recipe with command-line overrides applied before validation (so --force admits a recipe's α). A missing
    or unparsable file fails before the method registry (torch) is imported."""
    from .recipe.validation import RECIPE_EXPECTATION, read_yaml_mapping

    read_yaml_mapping(Path(args.recipe), "recipe", RECIPE_EXPECTATION)
    from .recipe import Recipe

    overrides: dict = {}
    if getattr(args, "allow_pickle", False):
        overrides["allow_pickle"] = True
    for key in ("vote_engine", "vote_batch_size", "vote_dtype", "vote_sharding", "vote_shard_size"):
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    method = {k: v for k, v in (("alpha", getattr(args, "alpha", None)), ("mask", getattr(args, "mask", None)))
              if v is not None}
    if getattr(args, "force", False):
        method["force"] = True
    if method:
        overrides["method"] = method
    as_lora = {k: v for k, v in (("rank", getattr(args, "as_lora", None)),
                                 ("energy", getattr(args, "lora_energy", None))) if v is not None}
    if as_lora:
        overrides["output"] = {"as_lora": as_lora}
    return Recipe.from_yaml(args.recipe, overrides=overrides)


def _evaluation_table(evaluation: Optional[dict]) -> str:
    from .transport.scores import evaluation_table  # light: no model library

    return evaluation_table(evaluation)


def _check_push(args: argparse.Namespace) -> None:
    """--private needs --push-to-hub; a missing or rejected token fails now, not after the run."""
    if args.private and not args.push_to_hub:
        raise GradFixError("--private is for --push-to-hub ORG/NAME.")
    if args.push_to_hub and launched_rank() == 0:
        from .hub import check_push_token

        user = check_push_token(args.push_to_hub)
        logging.getLogger("gradfix_hf").info("Hub token accepted (user %s)", user)


def _cmd_run(args: argparse.Namespace) -> int:
    recipe = _load_recipe(args)
    from .transport.destination import check_output_folder, run_destination

    output = run_destination(recipe, args.output, dry_run=args.dry_run, option="-o/--output")
    if output is not None:  # before any model library is imported (the run checks it again, with resolved models)
        check_output_folder(output, recipe, votes=args.votes, overwrite=args.overwrite)
    _check_push(args)
    from .transport import run_recipe  # the model libraries: only now

    result = run_recipe(recipe, output, votes=args.votes, dry_run=args.dry_run, overwrite=args.overwrite,
                        progress=not args.no_progress, force=args.force)
    if result is None or launched_rank() != 0:  # several processes: the main one wrote the folder and prints
        return 0
    if args.dry_run:
        print(json.dumps(result, indent=2, default=str))
        print("dry run: recipe, models and data are valid; nothing was computed or written.")
        if args.push_to_hub:
            print(f"the Hub token is valid; a real run would push to {args.push_to_hub}.")
        return 0
    totals = result.report["totals"]
    _print_auto(result.report)
    print(_evaluation_table(result.evaluation))
    print(f"kept {totals['kept_fraction']:.4f} of τ_A over {totals['transported_coordinates']} coordinates")
    lora = result.report.get("lora")
    if lora:
        print(f"LoRA adapter: {lora['totals']['lora_modules']} modules, r={lora['r']}, relative reconstruction "
              f"error {lora['totals']['relative_error']:.4g} (worst module {lora['totals']['max_relative_error']:.4g})")
    print(f"wrote {result.output_dir}")
    if args.push_to_hub:
        _print_push(result.output_dir, result.push_to_hub(args.push_to_hub, private=args.private or None))
    return 0


def _print_auto(report: dict) -> None:
    """What ``method: auto`` chose on the validation split, and every candidate's best score there."""
    auto = report.get("auto")
    if auto:
        print(f"method auto: chose {auto['label']} at α={auto['alpha']:g} ({auto['metric']} "
              f"{auto['validation']:.4f} on the validation split {auto['split']}; " + ", ".join(
                  f"{c['label']} {c['best_validation']:.4f} at α={c['best_alpha']:g}"
                  for c in auto["candidates"].values()) + ")")


def _print_push(folder: Path, commit) -> None:
    print(f"pushed {folder} to {commit.repo_url} in commit {commit.oid}")


def _cmd_push(args: argparse.Namespace) -> int:
    from .transport import push_output_folder

    folder = Path(args.output)
    if not folder.is_dir():
        raise GradFixError(f"{folder}: no such output folder.")
    commit = push_output_folder(folder, args.repo_id, private=args.private or None, revision=args.revision,
                                commit_message=args.commit_message)
    _print_push(folder, commit)
    return 0


def _cmd_votes(args: argparse.Namespace) -> int:
    output = Path(args.output)
    recipe = _load_recipe(args)
    from .transport.destination import check_votes_output

    check_votes_output(output, recipe, overwrite=args.overwrite)
    tasks = recipe.resolved_tasks()
    if args.task is None and len(tasks) > 1:
        raise GradFixError(f"{args.recipe}: the recipe has {len(tasks)} tasks; choose one with --task "
                           f"({', '.join(t.name for t in tasks)}).")
    chosen = [t for t in tasks if args.task in (None, t.name)]
    if not chosen:
        raise GradFixError(f"--task {args.task!r}: no such task in {args.recipe} "
                           f"({', '.join(t.name for t in tasks)}).")
    from .runtime import process_context, threads_for_model  # the model libraries: only now
    from .transport import compute_recipe_votes, prepare, save_votes

    prepared = prepare(recipe, chosen[0])
    with threads_for_model(prepared.parameter_count):  # tiny models: one thread (gradfix_hf/runtime/threads.py)
        votes = compute_recipe_votes(prepared, progress=not args.no_progress)  # every process votes
    context = process_context()
    written = save_votes(votes, output, context=context, overwrite=args.overwrite)
    if not context.is_main:
        return 0
    skipped = f" ({len(votes.not_voted)} more not voted: τ_A zero everywhere)" if votes.not_voted else ""
    shards = f" in {votes.shard.count} shards" if votes.shard else ""
    print(f"wrote {written}{shards}: N={votes.n_samples}, {len(votes.votes)} tensors{skipped}, "
          f"aggregation={votes.metadata['aggregation']}, target={votes.metadata['target']}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .hub import local_path
    from .transport.inspection import inspect_path

    path = local_path(args.path, where="inspect")  # a local path, or an hf:// reference to a votes file
    summary = inspect_path(path, args.top)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    if summary["kind"] == "votes":
        meta = summary["metadata"]
        print(f"votes file {path}")
        for key in ("n_samples", "aggregation", "objective", "target", "target_revision", "data_source",
                    "data_fingerprint", "library_version"):
            print(f"  {key:<17} {meta.get(key, '')}")
        print(f"  {'tensors':<17} {summary['tensors']} ({summary['coordinates']} coordinates, {summary['dtype']})")
        if summary["not_voted"]:
            print(f"  {'not voted':<17} {len(summary['not_voted'])} tensors (τ_A zero everywhere: θ_B's, unmasked)")
        print("  votes            " + ", ".join(f"{k} {v:.4f}" for k, v in summary["overall"].items()))
    else:
        print(f"output folder {path}")
        print(f"  method  {summary['method']}")
        print(f"  kept    {summary['totals']['kept_fraction']:.4f} of {summary['totals']['transported_coordinates']}")
        if summary["drift"]:
            from .merge import drift_table

            print(drift_table(summary["drift"]))
        print(_evaluation_table(summary["evaluation"]))
    return 0


def _parse_alphas(text: Optional[str]) -> Optional[list[float]]:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise GradFixError(f"--alphas: cannot read {text!r}; give numbers separated by commas, e.g. 0.2,0.5,1.0.")
    if not values or any(not v > 0 or v != v or v == float("inf") for v in values):
        raise GradFixError(f"--alphas: every α must be a finite number > 0, got {text!r}.")
    return values


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import check_sweep_outputs, require_matplotlib, sweep  # sweep imports the model libraries when run

    alphas = _parse_alphas(args.alphas)
    if args.plot:
        require_matplotlib()  # before the votes, not after
    recipe = _load_recipe(args)
    outputs = {"json": args.json_path, "markdown": args.markdown, "plot": args.plot}
    check_sweep_outputs(recipe, outputs, overwrite=args.overwrite, votes=args.votes)  # before the votes too
    result = sweep(recipe, alphas=alphas, votes=args.votes, progress=not args.no_progress, force=args.force)
    table = result.to_markdown()
    print(f"α chosen on {result.validation['split']} ({result.validation['n_samples']} samples)"
          + (f", reported on {result.test['split']} ({result.test['n_samples']} samples)" if result.test else
             "; no evaluation.test_split, so no unbiased score of the chosen α"))
    print(table)  # the grid-edge warnings were logged once by sweep() (result.warnings keeps them)
    for path in result.save(**outputs, overwrite=args.overwrite):
        print(f"wrote {path}")
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from .transport.inspection import describe_methods  # the registry (torch), and auto

    described = describe_methods()
    if args.json:
        print(json.dumps(described, indent=2))
        return 0
    for name, m in described["methods"].items():
        low, high = m["tasks"]
        count = f"{low} task vector" if low == high else f"{low}+ task vectors"
        print(f"{name}  ({m['pretty_name']}; {count})\n    {m['description']}")
        for pname, p in m["parameters"].items():
            choices = f" one of {', '.join(map(str, p['choices']))};" if p["choices"] else ""
            print(f"    {pname:<17} {p['type']:<5} default {p['default']!r};{choices} {p['doc']}")
    print("mask variants: " + ", ".join(described["mask_variants"]))
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from .quickstart import run_quickstart

    result = run_quickstart(args.workdir, progress=not args.no_progress, chat=args.chat)
    _print_auto(result.report)
    print(_evaluation_table(result.evaluation))
    print(f"wrote {result.output_dir}")
    return 0


def _error_line(exc: BaseException) -> str:
    """The error as one line; an OSError names its file and the system's reason."""
    if isinstance(exc, OSError) and not isinstance(exc, GradFixError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


COMMANDS = {"run": _cmd_run, "votes": _cmd_votes, "sweep": _cmd_sweep, "inspect": _cmd_inspect,
            "methods": _cmd_methods, "quickstart": _cmd_quickstart, "push": _cmd_push}


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from .runtime.allocator import reuse_from_environment

    reuse_from_environment()  # GRADFIX_REUSE_FREED_MEMORY=1: keep freed blocks (gradfix_hf/runtime/allocator.py)
    if getattr(args, "no_progress", False):  # also the bars of the libraries the run imports later
        from .runtime.progress import silence_progress_bars

        silence_progress_bars()
    code = 1  # stays 1 when an exception escapes the command
    try:
        if os.environ.get("GRADFIX_NUM_THREADS"):  # torch's CPU threads, every command (gradfix_hf/runtime/threads.py)
            from .runtime.threads import apply_configured_threads

            apply_configured_threads()
        code = COMMANDS[args.command](args)
    except (GradFixError, OSError) as exc:  # bad input, or a file the system refuses: one line, no traceback
        if launched_rank() == 0:  # under a launcher every process fails alike; the main one says why
            print(f"gradfix: error: {_error_line(exc)}", file=sys.stderr)
        code = 2
    finally:
        if "gradfix_hf.runtime.processes" in sys.modules:  # only a command that got that far has a process group
            from .runtime.processes import close_process_group

            close_process_group(finished=code == 0)  # a barrier first only if every process got here
    return code


if __name__ == "__main__":
    raise SystemExit(main())
