"""The commands that read what a run wrote, or what the package holds: ``push`` (an output folder to the Hub),
``inspect`` (a votes file or an output folder), ``methods`` (the registry) and ``quickstart`` (the embedded
defaults)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import GradFixError
from .common import evaluation_table, print_auto, print_push

def push_command(args: argparse.Namespace) -> int:
    from ..transport import push_output_folder

    folder = Path(args.output)
    if not folder.is_dir():
        raise GradFixError(f"{folder}: no such output folder.")
    commit = push_output_folder(folder, args.repo_id, private=args.private or None, revision=args.revision,
                                commit_message=args.commit_message)
    print_push(folder, commit)
    return 0


def inspect_command(args: argparse.Namespace) -> int:
    from ..hub import local_path
    from ..transport.inspection import inspect_path

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
            from ..merge import drift_table

            print(drift_table(summary["drift"]))
        print(evaluation_table(summary["evaluation"]))
    return 0


def methods_command(args: argparse.Namespace) -> int:
    from ..transport.inspection import describe_methods  # the registry (torch), and auto

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


def quickstart_command(args: argparse.Namespace) -> int:
    from ..quickstart import run_quickstart

    result = run_quickstart(args.workdir, progress=not args.no_progress, chat=args.chat)
    print_auto(result.report)
    print(evaluation_table(result.evaluation))
    print(f"wrote {result.output_dir}")
    return 0


