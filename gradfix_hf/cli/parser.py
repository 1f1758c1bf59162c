"""The ``gradfix`` command line: every command's arguments (argparse only: ``gradfix --help`` imports nothing else)."""
from __future__ import annotations

import argparse

from ..version import __version__

EPILOG = ("Recipes are YAML files: examples in recipes/, every key in docs/usage.md (section \"Recipes\"). "
          "Paper: https://arxiv.org/abs/2510.09658")


def add_recipe_overrides(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--align", choices=("none", "weight-matching"),
                        help="permute θ_A's hidden units and heads onto θ_B's before τ_A is taken (weight-matching: "
                             "a new release trained from scratch; needs scipy)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradfix", epilog=EPILOG,
        description="GradFix: transport a fine-tuning's task vector onto a new pre-trained model "
                    "with gradient-sign masks computed from a few labelled samples.")
    parser.add_argument("--version", action="version", version=f"gradfix_hf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_rebase_arguments(sub.add_parser(
        "rebase", help="carry a fine-tune or LoRA adapter onto a new base release (the recipe is inferred)",
        description="Rebase FINETUNED (a full fine-tune or a PEFT LoRA adapter of an old base; a folder or a Hub "
                    "id) onto NEW_BASE with a few samples of DATA: the old base, the objective and a validation "
                    "split are inferred, method auto chooses between naive addition and the GradFix masks on "
                    "that split, and the output folder holds the recipe it ran (recipe.yaml). A LoRA in gives a "
                    "LoRA out."))

    run = sub.add_parser("run", help="run a recipe: votes, mask, streaming merge, output folder",
                         description="Run a recipe end to end and write the transported model folder.")
    add_recipe_overrides(run)
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
    add_recipe_overrides(votes)
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
    add_recipe_overrides(sweep)
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




def add_rebase_arguments(parser: argparse.ArgumentParser) -> None:
    """``gradfix rebase``'s arguments: what to carry where, then what settles an inference."""
    parser.add_argument("finetuned", metavar="FINETUNED", help="the fine-tune or LoRA adapter (folder or Hub id)")
    parser.add_argument("--onto", required=True, metavar="NEW_BASE", help="the new base release (folder or Hub id)")
    parser.add_argument("--data", required=True, metavar="DATA",
                        help="samples of the task: a jsonl/json/csv/parquet file, a saved data set or a Hub data "
                             "set (messages, prompt/completion or text columns; text and label to classify)")
    parser.add_argument("-o", "--output", help="output folder (or --push-to-hub alone: a temporary one)")
    parser.add_argument("--push-to-hub", metavar="ORG/NAME", help="then push the output folder to this Hub repo")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    parser.add_argument("--base", metavar="OLD_BASE",
                        help="the old base FINETUNED was trained from (default: the adapter's base_model_name_or_path"
                             " or the model card's base_model)")
    parser.add_argument("--objective", choices=("sequence-classification", "causal-lm", "seq2seq", "sft"),
                        help="default: from the model (classifier, causal LM, encoder-decoder) and the data")
    parser.add_argument("--format", choices=("messages", "prompt-completion", "text"),
                        help="the SFT data shape, when the columns hold several")
    parser.add_argument("--samples", type=int, metavar="N",
                        help="vote samples: N rows of SFT data (default 32), or N per class (default 8)")
    parser.add_argument("--split", help="the split that votes (default: train, or the only one)")
    parser.add_argument("--data-config", dest="data_name", metavar="NAME", help="the data set's config name")
    parser.add_argument("--text-column", default="text", help="classification: the text column (default text)")
    parser.add_argument("--label-column", default="label", help="classification: the label column (default label)")
    parser.add_argument("--label-words", metavar="L=WORD,...",
                        help="seq2seq / causal-lm classification: each label's words, e.g. 0=negative,1=positive "
                             "(default: string labels as they are, or the fine-tune's id2label)")
    parser.add_argument("--validation-size", type=float, default=0.2, metavar="F",
                        help="without a validation split: carve this fraction (< 1) or row count (>= 1) of the "
                             "vote split, seeded (default 0.2)")
    parser.add_argument("--max-eval-samples", type=int, default=200, metavar="N",
                        help="held-out rows scored per split (default 200)")
    parser.add_argument("--alphas", help="comma-separated α grid of the choice (default 0.1,0.2,...,1.0)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--as-lora", type=int, metavar="RANK", help="write a LoRA adapter of this rank")
    out.add_argument("--full", action="store_true", help="a LoRA in: write full weights instead of a LoRA")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample draw and the carve (default 0)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what was inferred and what would be downloaded; download no weights")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous gradfix output folder")
    parser.add_argument("--no-progress", action="store_true", help="hide every progress bar")
    parser.add_argument("--allow-pickle", action="store_true", help="allow pickle (.bin) weights")
    parser.add_argument("--trust-remote-code", action="store_true", help="run code shipped with a model")
