"""Run under ``accelerate launch`` by tests/test_distributed.py (not a test module itself).

``python distributed_worker.py OUT [RECIPE_YAML ...]``: every process computes, through the real
distributed path, the votes of a few problems; the main process saves them under OUT, and every process
writes ``rank<r>.json`` (its rank, world, shard, and the errors it raised) so the test can check them
against one process.
"""
import json
import sys
from pathlib import Path

import torch

from gradfix_hf import Recipe, compute_recipe_votes, prepare
from gradfix_hf.errors import GradFixError
from gradfix_hf.runtime import close_process_group, on_main_process, process_context, shard_indices
from gradfix_hf.votes.distributed import distributed_votes, reference_vote_engine


def linear_problem(n_samples, nan_at=None):
    """The tests' small linear problem (test_votes): feature 0 never active, feature 1 always positive."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    examples = []
    for _ in range(n_samples):
        x = torch.randn(1, 5)
        x[0, 0] = 0.0
        x[0, 1] = x[0, 1].abs() + 0.1
        examples.append({"x": x, "y": torch.full((1, 3), 100.0)})
    if nan_at is not None:
        examples[nan_at]["y"] = torch.full((1, 3), float("nan"))
    return model, examples


def linear_loss(model, example):
    return (model(example["x"]) - example["y"]).pow(2).mean()


def linear_votes(n_samples, aggregation, context, nan_at=None):
    model, examples = linear_problem(n_samples, nan_at)
    names = ["weight", "bias"]
    shapes = {name: tuple(dict(model.named_parameters())[name].shape) for name in names}
    engine = reference_vote_engine(model, linear_loss, names, device=context.device)
    return distributed_votes(engine, examples, shapes, aggregation=aggregation, progress=False, context=context)


def save(path, votes, evidence):
    tensors = {name: v for name, v in votes.items()}
    tensors.update({"evidence/" + name: ev.to(torch.uint8) for name, ev in evidence.items()})
    from safetensors.torch import save_file

    save_file(tensors, str(path))


def main(out, recipes):
    out = Path(out)
    context = process_context()
    info = {"rank": context.rank, "world": context.world, "is_main": context.is_main,
            "initialized": torch.distributed.is_initialized(),
            "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
            "shards": {n: list(shard_indices(n, context.rank, context.world)) for n in (2, 4, 5, 130)},
            "errors": {}}
    for n_samples in (2, 5, 130):
        for aggregation in ("majority", "mean"):
            votes, evidence = linear_votes(n_samples, aggregation, context)
            on_main_process(context, lambda: save(out / f"linear-{aggregation}-{n_samples}.safetensors", votes, evidence))
    # a NaN in the last process's shard: every process raises, none waits forever in a collective
    try:
        linear_votes(5, "majority", context, nan_at=4)
    except GradFixError as exc:
        info["errors"]["nan"] = [type(exc).__name__, str(exc)]
    for recipe_path in recipes:
        vf = compute_recipe_votes(prepare(Recipe.from_yaml(recipe_path)), progress=False)
        on_main_process(context, lambda: vf.save(out / (Path(recipe_path).stem + ".safetensors")))
    (out / f"rank{context.rank}.json").write_text(json.dumps(info))
    context.barrier()
    close_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
