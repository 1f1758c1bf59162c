"""What ``gradfix methods`` and ``gradfix inspect`` show, as plain data: every ``method.name`` a recipe may give
(the registry's merge methods and ``auto``, which :mod:`.auto` runs), and a summary of a votes file or an output
folder. Light: the method registry (torch) and the files, no model library."""
from __future__ import annotations

from pathlib import Path

from ..methods import MASK_VARIANTS, registered_methods
from ..recipe import AUTO, MethodConfig
from .output_folder import read_report

AUTO_DESCRIPTION = ("Let the validation split choose: score every candidate (GradFix parameter sets, naive "
                    "addition among them) over the α grid (evaluation.alphas, may go above 1) on evaluation.split, "
                    "from one vote, and write the best as a plain GradFix method. Needs an evaluation section; with "
                    "evaluation.test_path or test_split the run scores the choice on that test split.")
CANDIDATES_DOC = ("the candidates, in order (ties go to the earlier one, then the smaller α): a mask name or a "
                  "mapping of gradfix parameters (mask, no_evidence, no_evidence_scale, min_margin, seed, rho), "
                  "with few_shot: PASSES to fine-tune it on the vote samples afterwards; the fair baselines few-shot, "
                  "few-shot-10x and gradfix+few-shot (lr chosen on validation from evaluation.few_shot_lrs); "
                  "mean and oracle cannot be candidates")


def describe_methods() -> dict:
    """Every ``method.name`` value with its parameters (what ``gradfix methods`` prints), and the mask variants."""
    methods = {
        name: {"pretty_name": m.pretty_name, "description": m.description,
               "tasks": [m.min_tasks, m.max_tasks], "shared_vote": m.shared_vote,
               "parameters": {p.name: {"type": p.kind.__name__, "default": p.default, "choices": p.choices,
                                       "doc": p.doc} for p in m.parameters}}
        for name, m in registered_methods().items()}
    default = MethodConfig(name=AUTO).to_dict()["candidates"]  # the recipe's default list, as YAML writes it
    methods[AUTO] = {"pretty_name": "automatic choice on the validation split", "description": AUTO_DESCRIPTION,
                     "tasks": [1, 1], "shared_vote": False,
                     "parameters": {"candidates": {"type": "list", "default": default, "choices": None,
                                                   "doc": CANDIDATES_DOC}}}
    return {"mask_variants": list(MASK_VARIANTS), "methods": methods}


def inspect_path(path: Path, top: int = 10) -> dict:
    """A summary of a votes file (one file, or a sharded one by its index or the path it was written to) or an
    output folder (what ``gradfix inspect`` prints)."""
    from ..errors import GradFixError
    from ..storage import VotesFile, index_path

    if not path.exists() and not index_path(path).is_file():
        raise GradFixError(f"{path}: no such file or folder.")
    if path.is_dir():
        report = read_report(path)
        worst = sorted(report["per_tensor"].items(), key=lambda kv: kv[1]["kept_fraction"])[:top]
        return {"kind": "output", "path": str(path), "method": report["method"], "totals": report["totals"],
                "votes": report["votes"], "evaluation": report["evaluation"], "tensors": report["tensors"],
                "drift": report.get("drift"), "lowest_kept_fraction": {k: v["kept_fraction"] for k, v in worst}}
    votes = VotesFile.load(path)
    stats = {name: votes.statistics(name) for name in votes.votes}
    ordered = sorted(stats.items(), key=lambda kv: -kv[1]["no_evidence"])[:top]
    return {"kind": "votes", "path": str(path), "metadata": votes.metadata, "tensors": len(votes.votes),
            "not_voted": votes.not_voted,
            "coordinates": sum(v.numel() for v in votes.votes.values()), "overall": votes.overall_statistics(),
            "dtype": str(next(iter(votes.votes.values())).dtype), "most_no_evidence": dict(ordered)}
