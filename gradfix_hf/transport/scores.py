"""Which split a run's held-out scores come from, said the same way by the CLI printout, ``gradfix inspect`` and
the model card, and the table the CLI prints. Light: no model library.

A run scores the test split when ``evaluation.test_path``/``test_split`` gives one (``split_role: test`` in the
report), else ``evaluation.split``, the validation split (``split_role: validation``). ``method: auto`` chooses on
the validation split; without a test split its table is that split, optimistic for the chosen row.
``method_chosen_on`` (``auto`` only) names the split that chose.
"""
from __future__ import annotations

from typing import Optional

VALIDATION, TEST = "validation", "test"


def evaluation_heading(evaluation: dict, *, what: Optional[str] = None, code: bool = False) -> str:
    """One line naming what was scored (default: the first metric), the kind of split (validation or test), its
    source and size; ``code`` quotes the source as markdown code (the model card)."""
    what = what or evaluation["metric"]
    source = f"`{evaluation['split']}`" if code else evaluation["split"]
    size = f"{evaluation['n_samples']} samples"
    role: Optional[str] = evaluation.get("split_role")
    if role is None:  # a report written before splits were labelled
        return f"held-out {what} on {source} ({size})"
    heading = f"{what} on the {role} split {source} ({size})"
    chosen_on = evaluation.get("method_chosen_on")
    if chosen_on is None:
        return heading
    if chosen_on == role:
        return (heading + "; the same split chose the method and α, so the chosen row is optimistic (set "
                "evaluation.test_path or test_split for a test split)")
    return heading + f"; the method and α were chosen on the {chosen_on} split"


def evaluation_table(evaluation: Optional[dict]) -> str:
    """The report's evaluation table as printed: which split (validation or test) it scores, then one row each,
    with a column per metric when there are several (the first one chose α)."""
    if not evaluation:
        return ""
    metrics = [m for m in evaluation.get("metrics") or [evaluation["metric"]]
               if all(m in (row.get("scores") or {}) for row in evaluation["rows"])] or [evaluation["metric"]]
    if len(metrics) == 1:
        lines = [evaluation_heading(evaluation) + ":"]
        lines += [f"  {row['model']:<28} {_alpha(row):<8} {row['score']:.4f}" for row in evaluation["rows"]]
        return "\n".join(lines)
    lines = [evaluation_heading(evaluation, what=", ".join(metrics)) + ":",
             f"  {'':<28} {'':<8} " + " ".join(f"{m:>10}" for m in metrics)]
    for row in evaluation["rows"]:
        lines.append(f"  {row['model']:<28} {_alpha(row):<8} " + " ".join(f"{row['scores'][m]:>10.4f}"
                                                                           for m in metrics))
    return "\n".join(lines)


def _alpha(row: dict) -> str:
    return "" if row["alpha"] is None else f"α={row['alpha']:g}"
