"""The local files and folders a run reads — the recipe, model folders and adapters, data files, votes files and
the votes cache — which no output may replace, contain or lie inside (:mod:`gradfix_hf.storage.destinations`)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional, Union

from ..hub import is_hub_reference, looks_local
from ..plan import TARGET
from ..recipe import Recipe
from .prepare import PreparedRun

Inputs = list[tuple[str, Path]]


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
             ("--votes", os.fspath(votes) if votes is not None else None)]
    found += [(what, local) for what, path in extra if (local := _local(path)) is not None]
    return found


def resolved_inputs(prepared: Iterable[PreparedRun]) -> Inputs:
    """Where the prepared runs' models really are (a Hub model: its snapshot in the cache; an adapter's base)."""
    return [(f"{role} ({model.name})", model.local_dir) for run in prepared for role, model in run.models.items()]
