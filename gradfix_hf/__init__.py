"""gradfix_hf: carry a fine-tuning from one pre-trained model to its newer release without fine-tuning again.

Two stages with one file between them:

1. ``gradfix_hf.votes``: per-sample gradient signs on the new model θ_B, folded into integer votes.
2. ``gradfix_hf.merge``: data-free streaming merge θ_B + α·(m ⊙ τ_A), tensor by tensor.

``rebase`` carries a fine-tune (or a LoRA adapter) onto a new base in one call, inferring the recipe;
``Recipe`` (YAML) names the models, data, method and output; ``transport`` runs one and returns a result
whose ``.model`` is a ``transformers`` model ready for ``pipeline(...)``. The merge methods are in the registry
of ``gradfix_hf.methods``. How the folders are layered: docs/architecture.md.

The errors and ``__version__`` are imported with the package; every other name is imported from its module when
first used (:mod:`gradfix_hf.runtime.exports`), so ``import gradfix_hf`` (and ``gradfix --help``) loads no
torch, transformers or datasets. ``gradfix_hf.transport`` is the function; the package of that name is
``importlib.import_module("gradfix_hf.transport")``.
"""
from typing import TYPE_CHECKING

from .errors import (CompatibilityError, DataError, GradFixError, ModelResolutionError, NonFiniteError, RecipeError,
                     VotesFileError)
from .runtime.exports import lazy_exports
from .version import __version__

if TYPE_CHECKING:  # what the names below are, for readers and type checkers; imported on first use
    from .rebase import rebase
    from .recipe import Recipe
    from .storage import VotesFile
    from .sweep import SweepResult, sweep
    from .transport import TransportResult, compute_recipe_votes, prepare, run_recipe, transport

__getattr__, __dir__ = lazy_exports(__name__, {
    "Recipe": ".recipe", "VotesFile": ".storage", "sweep": ".sweep", "SweepResult": ".sweep",
    "transport": ".transport", "run_recipe": ".transport", "prepare": ".transport",
    "compute_recipe_votes": ".transport", "TransportResult": ".transport", "rebase": ".rebase"})

__all__ = ["Recipe", "rebase", "transport", "sweep", "SweepResult", "run_recipe", "prepare", "compute_recipe_votes",
           "TransportResult", "VotesFile",
           "GradFixError", "RecipeError", "ModelResolutionError", "CompatibilityError", "DataError",
           "VotesFileError", "NonFiniteError", "__version__"]
