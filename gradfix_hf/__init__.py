"""gradfix_hf: carry a fine-tuning from one pre-trained model to its newer release without fine-tuning again.

Two stages with one file between them:

1. ``gradfix_hf.votes``: per-sample gradient signs on the new model θ_B, folded into integer votes.
2. ``gradfix_hf.merge``: data-free streaming merge θ_B + α·(m ⊙ τ_A), tensor by tensor.

``Recipe`` (YAML) names the models, data, method and output; ``transport`` runs one and returns a result
whose ``.model`` is a ``transformers`` model ready for ``pipeline(...)``. The merge methods are in the registry
of ``gradfix_hf.methods``. How the folders are layered: docs/architecture.md.
"""
from .errors import (CompatibilityError, DataError, GradFixError, ModelResolutionError, NonFiniteError, RecipeError,
                     VotesFileError)
from .recipe import Recipe
from .transport import TransportResult, compute_recipe_votes, prepare, run_recipe, transport
from .sweep import SweepResult, sweep
from .version import __version__
from .votes import VotesFile

__all__ = ["Recipe", "transport", "sweep", "SweepResult", "run_recipe", "prepare", "compute_recipe_votes",
           "TransportResult", "VotesFile",
           "GradFixError", "RecipeError", "ModelResolutionError", "CompatibilityError", "DataError",
           "VotesFileError", "NonFiniteError", "__version__"]
