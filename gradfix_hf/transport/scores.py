"""Which split a run's held-out scores come from, said the same way by the CLI printout, ``gradfix inspect`` and
the model card. Light: no model library.

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
