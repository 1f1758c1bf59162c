"""Run under ``accelerate launch`` by tests/test_fsdp_votes.py (not a test module itself).

``python fsdp_worker.py OUT SHARDING [--shard-size S] [--die-at K] RECIPE_YAML ...``: every process computes the
votes of each recipe with ``vote_sharding`` = SHARDING through the library's own path (``compute_recipe_votes``)
and they are saved together (``save_votes``: one file, or a shard per process and an index) as OUT/<recipe>.
``--die-at K``: the last process exits abruptly (``os._exit``) in its K-th loss computation — a process that dies
mid-vote, as a killed or crashed worker does. ``--nan-at K``: its K-th micro-batch's losses are NaN instead.
``--run``: run each recipe (``run_recipe``) into OUT/<recipe> instead of saving its votes.
"""
import argparse
import os
from pathlib import Path

from gradfix_hf import Recipe, compute_recipe_votes, prepare, run_recipe
from gradfix_hf.runtime import close_process_group, process_context
from gradfix_hf.transport import save_votes


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("sharding")
    parser.add_argument("recipes", nargs="+")
    parser.add_argument("--shard-size", type=int, default=0)
    parser.add_argument("--die-at", type=int)
    parser.add_argument("--nan-at", type=int)
    parser.add_argument("--run", action="store_true")
    args = parser.parse_args()
    context = process_context()
    for recipe_path in args.recipes:
        recipe = Recipe.from_yaml(recipe_path).replace(vote_sharding=args.sharding, vote_shard_size=args.shard_size)
        prepared = prepare(recipe)
        if (args.die_at or args.nan_at) and context.rank == context.world - 1:
            losses, calls = prepared.objective.batch_losses, []

            def failing(model, batch):
                calls.append(1)
                if len(calls) == args.die_at:
                    os._exit(3)
                out = losses(model, batch)
                return out * float("nan") if len(calls) == args.nan_at else out
            prepared.objective.batch_losses = failing
        if args.run:
            run_recipe(recipe, Path(args.out) / Path(recipe_path).stem, progress=False)
            continue
        votes = compute_recipe_votes(prepared, progress=False)
        save_votes(votes, Path(args.out) / (Path(recipe_path).stem + ".safetensors"), context=context)
    context.barrier()
    close_process_group()


if __name__ == "__main__":
    main()
