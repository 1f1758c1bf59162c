"""What a run reads: the recipe it is given (:func:`as_recipe`: an object, a dict or a YAML path), and the local
files and folders it names — model folders and adapters, data files, votes files and the votes cache — which no
output may replace, contain or lie inside (:mod:`gradfix_hf.storage.destinations`). Light: no model library is
imported, so outputs are checked against inputs before the first model is needed."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional, Union

from ..hub import is_hub_reference, looks_local
from ..recipe import Recipe

if TYPE_CHECKING:
    from .prepare import PreparedRun

Inputs = list[tuple[str, Path]]
#: the target's role name (``gradfix_hf.plan.TARGET``): one target for every task of a merge
TARGET = "models.target"
#: how errors name the votes file given to the run itself (not named in the recipe)
GIVEN_VOTES = "the votes file given with --votes (votes= from Python)"


def as_recipe(recipe: Union[Recipe, str, os.PathLike, dict], loss_fn: Optional[Any] = None) -> Recipe:
    """A :class:`Recipe` from a recipe object, a dict or a YAML path (with ``loss_fn`` for a 'callable' objective)."""
    if isinstance(recipe, dict):
        return Recipe.from_dict(recipe, loss_fn=loss_fn)
    if not isinstance(recipe, Recipe):
        return Recipe.from_yaml(recipe, loss_fn=loss_fn)
    return recipe.replace(loss_fn=loss_fn) if loss_fn is not None else recipe


def _local(path: Optional[str]) -> Optional[Path]:
    """``path`` as a local path when it names one (a Hub id or an ``hf://`` reference is not)."""
    if not path or is_hub_reference(path):
        return None
    local = Path(path).expanduser()
    return local if local.exists() or looks_local(path) else None


def recipe_inputs(recipe: Recipe, votes: Optional[Union[str, os.PathLike]] = None) -> Inputs:
    """What the recipe names as local inputs (before anything is resolved or downloaded)."""
    found: Inputs = []
    if recipe.source_file:
        found.append(("the recipe", Path(recipe.source_file)))
    for task in recipe.resolved_tasks():
        for key in ("source", "source_finetuned", "target", "target_finetuned"):
            ref = getattr(task.models, key)
            if ref is not None and looks_local(ref.path):
                where = TARGET if key == "target" else f"{task.where}.{key}"
                found.append((where, Path(ref.path).expanduser() / (ref.subfolder or "")))
        data = task.data
        evaluation = recipe.evaluation
        data_key = "data.path" if task.where == "models" else f"{task.where}.data.path"
        paths = [(data_key, data.path if data else None),
                 ("evaluation.path", evaluation.path if evaluation else None),
                 ("evaluation.test_path", evaluation.test_path if evaluation else None),
                 (f"{task.where}.votes", task.votes)]
        found += [(what, local) for what, path in paths if (local := _local(path)) is not None]
    extra = [("votes", recipe.votes), ("votes_cache", recipe.votes_cache),
             (GIVEN_VOTES, os.fspath(votes) if votes is not None else None)]
    found += [(what, local) for what, path in extra if (local := _local(path)) is not None]
    return found


def resolved_inputs(prepared: Iterable["PreparedRun"]) -> Inputs:
    """Where the prepared runs' models really are (a Hub model: its snapshot in the cache; an adapter's base)."""
    return [(f"{role} ({model.name})", model.local_dir) for run in prepared for role, model in run.models.items()]
