"""``gradfix rebase FINETUNED --onto NEW_BASE --data DATA``: print what was inferred, run, print the choice."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Union

import yaml

from ..errors import GradFixError
from ..runtime.launch import launched_rank
from .common import check_push, evaluation_table, print_auto, print_push
from .recipe_commands import parse_alphas


def _size(value: float) -> Union[int, float]:
    """``--validation-size``: a fraction below 1, else a whole number of rows."""
    if value >= 1:
        if value != int(value):
            raise GradFixError(f"--validation-size: a fraction in (0, 1) or a whole number of rows, got {value:g}.")
        return int(value)
    return value


def _label_words(text):
    """``--label-words 0=negative,1=positive`` → ``{0: "negative", 1: "positive"}`` (keys that are digits: ints)."""
    if text is None:
        return None
    words = {}
    for item in text.split(","):
        key, sep, word = item.partition("=")
        if not sep or not key.strip() or not word.strip():
            raise GradFixError(f"--label-words: cannot read {item!r}; give LABEL=WORD pairs separated by commas, "
                               "e.g. 0=negative,1=positive.")
        key = key.strip()
        words[int(key) if key.isdigit() else key] = word.strip()
    return words


def _size_text(n_bytes) -> str:
    if n_bytes is None:
        return "unknown size"
    for unit in ("B", "KB", "MB", "GB"):
        if n_bytes < 1000:
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    return f"{n_bytes:.1f} TB"


def print_inference(inferred: dict) -> None:
    """The roles, the objective, the splits, the output and the downloads, each with where it came from."""
    print(f"fine-tune    {inferred['finetuned']}" + (f" (LoRA adapter, r={inferred['adapter']['r']})"
                                                     if inferred["adapter"] else " (full weights)"))
    print(f"old base     {inferred['base']['value']}  [from {inferred['base']['from']}]")
    print(f"new base     {inferred['onto']}")
    print(f"data         {inferred['data']}")
    print(f"objective    {inferred['objective']['value']}  [from {inferred['objective']['from']}]")
    splits = inferred["splits"]
    print(f"splits       vote: {splits['vote']}; validation: {splits['validation']}; test: {splits['test'] or '–'}")
    print(f"output       {inferred['output']}")
    for role, download in inferred["downloads"].items():
        what = "local, nothing to download" if download["where"] == "local" else "from the Hub"
        size = _size_text(download["bytes"]) if download.get("files") is not None else download.get("unknown")
        print(f"{role:<12} {what}: {download['files'] or 0} files, {size}")


def rebase_command(args: argparse.Namespace) -> int:
    if args.output is None and args.push_to_hub is None and not args.dry_run:
        raise GradFixError("rebase: give an output folder (-o/--output) or a Hub repo (--push-to-hub ORG/NAME).")
    alphas = parse_alphas(args.alphas)
    if args.output is not None and not args.dry_run:  # before any model library is imported
        from ..transport.output_folder import check_destination

        inputs = (("FINETUNED", args.finetuned), ("--onto", args.onto), ("--data", args.data), ("--base", args.base))
        local = [(name, Path(value)) for name, value in inputs if value and Path(value).expanduser().exists()]
        check_destination(Path(args.output), args.overwrite, local)
    check_push(args)
    from ..rebase import RebaseOptions, infer_rebase, rebase_recipe, run_rebase  # the model libraries: only now

    given = {**vars(args), "label_words": _label_words(args.label_words), "alphas": alphas,
             "validation_size": _size(args.validation_size)}
    options = RebaseOptions(**{name: given[name] for name in RebaseOptions.__dataclass_fields__})
    inferred = infer_rebase(args.finetuned, args.onto, args.data, options)
    rebase_recipe(inferred)  # valid, or a RecipeError naming the key
    main = launched_rank() == 0
    if main:
        print_inference(inferred.as_dict())
    if args.dry_run:
        if main:
            print("recipe:\n" + yaml.safe_dump(inferred.recipe, sort_keys=False).rstrip())
            print("dry run: nothing was downloaded, computed or written.")
        return 0
    result = run_rebase(inferred, args.output, token=None, overwrite=args.overwrite,
                        progress=not args.no_progress)
    if result is None or not main:
        return 0
    print_auto(result.report)
    margin = (result.report.get("auto") or {}).get("margin")
    if margin:
        print(f"won by {margin['difference']:.4f} over {margin['runner_up']}"
              + (f", {margin['naive_difference']:.4f} over naive addition" if "naive_difference" in margin else ""))
    print(evaluation_table(result.evaluation))
    if args.output is not None:  # else a temporary folder, removed once pushed
        print(f"wrote {result.output_dir} (recipe.yaml reruns it: gradfix run {result.output_dir}/recipe.yaml -o OUT)")
    if args.push_to_hub:
        print_push(result.output_dir, result.push_to_hub(args.push_to_hub, private=args.private or None))
    return 0

