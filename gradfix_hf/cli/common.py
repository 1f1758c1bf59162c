"""What several commands share: the recipe with its command-line overrides, the Hub token check, and the lines
that print a run's choice and scores. Light: the model libraries are imported by the commands, when they run."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional

from ..errors import GradFixError
from ..runtime.launch import launched_rank

def load_recipe(args: argparse.Namespace):
    """The recipe with command-line overrides applied before validation (so --force admits a recipe's α). A missing
    or unparsable file fails before the method registry (torch) is imported."""
    from ..recipe.validation import RECIPE_EXPECTATION, read_yaml_mapping

    read_yaml_mapping(Path(args.recipe), "recipe", RECIPE_EXPECTATION)
    from ..recipe import Recipe

    overrides: dict = {}
    if getattr(args, "allow_pickle", False):
        overrides["allow_pickle"] = True
    for key in ("vote_engine", "vote_batch_size", "vote_dtype", "vote_sharding", "vote_shard_size", "align"):
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


def evaluation_table(evaluation: Optional[dict]) -> str:
    from ..transport.scores import evaluation_table as table  # light: no model library

    return table(evaluation)


def check_push(args: argparse.Namespace) -> None:
    """--private needs --push-to-hub; a missing or rejected token fails now, not after the run."""
    if args.private and not args.push_to_hub:
        raise GradFixError("--private is for --push-to-hub ORG/NAME.")
    if args.push_to_hub and launched_rank() == 0:
        from ..hub import check_push_token

        user = check_push_token(args.push_to_hub)
        logging.getLogger("gradfix_hf").info("Hub token accepted (user %s)", user)


def print_auto(report: dict) -> None:
    """What ``method: auto`` chose on the validation split, and every candidate's best score there."""
    auto = report.get("auto")
    if auto:
        from ..transport.auto import at_alpha

        print(f"method auto: chose {auto['label']}{at_alpha(auto['alpha'], ' at α=')} ({auto['metric']} "
              f"{auto['validation']:.4f} on the validation split {auto['split']}; " + ", ".join(
                  f"{c['label']} {c['best_validation']:.4f}{at_alpha(c['best_alpha'], ' at α=')}"
                  for c in auto["candidates"].values()) + ")")


def print_push(folder: Path, commit) -> None:
    print(f"pushed {folder} to {commit.repo_url} in commit {commit.oid}")


