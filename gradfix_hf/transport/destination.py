"""Where a run's output goes, checked before any work and before anything heavy is imported (no transformers,
datasets or models): a run needs an output folder, and no output may replace, contain or lie inside an input, nor
replace anything gradfix did not write (:mod:`gradfix_hf.storage.destinations`).

``gradfix run``/``gradfix votes`` call these right after reading the recipe; :func:`gradfix_hf.transport` calls
them first too, so a Python run fails on its output before it resolves a model.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from ..errors import GradFixError
from ..recipe import Recipe
from ..storage import check_destination, check_not_an_input, is_votes_file
from .inputs import recipe_inputs
from .output_folder import check_destination as check_folder_destination

PathLike = Union[str, os.PathLike]
#: how a Python caller gives a run its output (what the error names); the CLI names -o/--output
PYTHON_OUTPUT = "output_dir= (transport(recipe, output_dir) / run_recipe(recipe, output_dir))"


def run_destination(recipe: Recipe, output_dir: Optional[PathLike] = None, *, dry_run: bool = False,
                    option: str = PYTHON_OUTPUT) -> Optional[Path]:
    """The output folder of a run: ``output_dir``, else the recipe's ``output.path``. A run that writes needs one
    (a GradFixError naming ``option``, the way the caller gives it); a dry run writes nothing and may have none."""
    given = os.fspath(output_dir) if output_dir is not None else ""
    destination = given or recipe.output.path
    if not destination:
        if dry_run:
            return None
        raise GradFixError(f"no output folder: give one with {option}, or set output.path in the recipe. A run "
                           "writes a model folder and never picks one for you; nothing was done.")
    return Path(destination)


def check_output_folder(destination: PathLike, recipe: Recipe, *, votes: Optional[PathLike] = None,
                        overwrite: bool = False) -> None:
    """Before any work: refuse an output folder that would replace, contain or lie inside a local input of the
    recipe (models, data, votes, the recipe file), whose path is blocked, or that exists and is neither empty nor
    (with ``overwrite``) a previous gradfix output. Models resolved from the Hub are checked once resolved."""
    check_folder_destination(Path(destination), overwrite, recipe_inputs(recipe, votes))


def check_votes_output(path: PathLike, recipe: Recipe, *, overwrite: bool = False) -> None:
    """Before any work: a votes file may not replace, contain or lie inside an input, nor replace (even with
    ``overwrite``) anything but a previous votes file."""
    check_not_an_input(path, recipe_inputs(recipe), "votes file")
    check_destination(path, overwrite=overwrite, recognise=is_votes_file, folder=False, where="votes file")
