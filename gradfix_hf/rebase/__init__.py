"""``gradfix rebase``: one command to carry a fine-tune or a LoRA adapter onto a new base release.

What it infers from the files the user has (:mod:`.inference`: the old base, the objective, the splits), the
recipe built from that (:mod:`.inferred_recipe`), and the run (:mod:`.run`). ``gradfix_hf.rebase`` is the function;
the package is ``importlib.import_module("gradfix_hf.rebase")``.
"""
from typing import TYPE_CHECKING

from ..runtime.exports import lazy_exports

if TYPE_CHECKING:
    from .inference import RebaseInference, RebaseOptions
    from .inferred_recipe import infer_rebase
    from .run import rebase, rebase_recipe, run_rebase

__getattr__, __dir__ = lazy_exports(__name__, {
    "RebaseInference": ".inference", "RebaseOptions": ".inference", "infer_rebase": ".inferred_recipe",
    "rebase": ".run", "rebase_recipe": ".run", "run_rebase": ".run"})

__all__ = ["RebaseInference", "RebaseOptions", "infer_rebase", "rebase", "rebase_recipe", "run_rebase"]
