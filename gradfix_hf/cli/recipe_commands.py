"""The commands that run a recipe: ``run`` (both stages and the output folder), ``votes`` (stage 1 only) and
``sweep`` (α chosen on validation, reported on test)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from ..errors import GradFixError
from ..runtime.launch import launched_rank
from .common import check_push, evaluation_table, load_recipe, print_auto, print_push

def run_command(args: argparse.Namespace) -> int:
    recipe = load_recipe(args)
    from ..transport.destination import check_output_folder, run_destination

    output = run_destination(recipe, args.output, dry_run=args.dry_run, option="-o/--output")
    if output is not None:  # before any model library is imported (the run checks it again, with resolved models)
        check_output_folder(output, recipe, votes=args.votes, overwrite=args.overwrite)
    check_push(args)
    from ..transport import run_recipe  # the model libraries: only now

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
    print_auto(result.report)
    print(evaluation_table(result.evaluation))
    print(f"kept {totals['kept_fraction']:.4f} of τ_A over {totals['transported_coordinates']} coordinates")
    lora = result.report.get("lora")
    if lora:
        print(f"LoRA adapter: {lora['totals']['lora_modules']} modules, r={lora['r']}, relative reconstruction "
              f"error {lora['totals']['relative_error']:.4g} (worst module {lora['totals']['max_relative_error']:.4g})")
    print(f"wrote {result.output_dir}")
    if args.push_to_hub:
        print_push(result.output_dir, result.push_to_hub(args.push_to_hub, private=args.private or None))
    return 0


def votes_command(args: argparse.Namespace) -> int:
    output = Path(args.output)
    recipe = load_recipe(args)
    from ..transport.destination import check_votes_output

    check_votes_output(output, recipe, overwrite=args.overwrite)
    tasks = recipe.resolved_tasks()
    if args.task is None and len(tasks) > 1:
        raise GradFixError(f"{args.recipe}: the recipe has {len(tasks)} tasks; choose one with --task "
                           f"({', '.join(t.name for t in tasks)}).")
    chosen = [t for t in tasks if args.task in (None, t.name)]
    if not chosen:
        raise GradFixError(f"--task {args.task!r}: no such task in {args.recipe} "
                           f"({', '.join(t.name for t in tasks)}).")
    from ..runtime import process_context, threads_for_model  # the model libraries: only now
    from ..transport import compute_recipe_votes, prepare, save_votes

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


def parse_alphas(text: Optional[str]) -> Optional[list[float]]:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise GradFixError(f"--alphas: cannot read {text!r}; give numbers separated by commas, e.g. 0.2,0.5,1.0.")
    if not values or any(not v > 0 or v != v or v == float("inf") for v in values):
        raise GradFixError(f"--alphas: every α must be a finite number > 0, got {text!r}.")
    return values


def sweep_command(args: argparse.Namespace) -> int:
    from ..sweep import check_sweep_outputs, require_matplotlib, sweep  # sweep imports the model libraries when run

    alphas = parse_alphas(args.alphas)
    if args.plot:
        require_matplotlib()  # before the votes, not after
    recipe = load_recipe(args)
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


