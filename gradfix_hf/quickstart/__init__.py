"""The embedded default: tiny models and data built offline, and the quickstart recipe that uses them."""
from __future__ import annotations

from pathlib import Path
from typing import Union

import yaml

from ..recipe import Recipe
from ..runtime import small_model_threads
from ..transport import TransportResult, transport
from .toy import build_quickstart_assets, word_tokenizer

RECIPE_PATH = Path(__file__).with_name("recipe.yaml")
DEFAULT_FOLDER = "./gradfix-quickstart/"


def quickstart_recipe(workdir: Union[str, Path]) -> Recipe:
    """The packaged quickstart recipe with its paths pointing into ``workdir``."""
    text = RECIPE_PATH.read_text().replace(DEFAULT_FOLDER, f"{Path(workdir).resolve()}/")
    return Recipe.from_dict(yaml.safe_load(text))


def run_quickstart(workdir: Union[str, Path] = "gradfix-quickstart", *, progress: bool = True) -> TransportResult:
    """Build the tiny models once (kept in ``workdir``) and run the quickstart recipe; returns the result.

    Runs on one CPU thread (``GRADFIX_NUM_THREADS`` overrides it, :mod:`gradfix_hf.runtime.threads`): fast on a
    busy machine, and the same figures whatever the core count."""
    workdir = Path(workdir)
    marker = workdir / ".built"
    with small_model_threads():
        if not marker.is_file():
            build_quickstart_assets(workdir)
            marker.write_text("ok\n")
        recipe = quickstart_recipe(workdir)
        return transport(recipe, overwrite=True, progress=progress)


__all__ = ["RECIPE_PATH", "build_quickstart_assets", "quickstart_recipe", "run_quickstart", "word_tokenizer"]
