"""The output folder: written into a hidden temporary folder next to the destination and renamed into place at
the end, so an interrupted run never leaves a folder that looks finished, and never over an input or a folder
gradfix did not write (:mod:`gradfix_hf.storage.destinations`); its JSON report; and its push to the Hub in one
commit. What goes in it is written by :mod:`.run`; its model card by :mod:`.model_card`. Checking a destination
imports no model library (``gradfix run -o`` refuses a bad output before transformers is imported).
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterable, Iterator, Optional

from ..errors import GradFixError
from ..hub import push_folder
from ..storage import destinations
from ..storage.destinations import check_not_an_input

REPORT_NAME = "gradfix_report.json"
RECIPE_NAME = "gradfix_recipe.yaml"
#: the recipe a `gradfix rebase` built and ran (method auto unresolved; RECIPE_NAME holds its resolved form)
REBASE_RECIPE_NAME = "recipe.yaml"


def is_output_folder(path: Path) -> bool:
    """Whether ``path`` is a previous gradfix output folder (it holds a readable gradfix report), the only kind of
    non-empty folder ``overwrite`` replaces."""
    try:
        report = json.loads((Path(path) / REPORT_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and "library_version" in report and "per_tensor" in report


def check_destination(destination: Path, overwrite: bool = False, inputs: Iterable[tuple[str, Path]] = ()) -> None:
    """Before any work: refuse an output folder that would replace, contain or lie inside an input, whose path is
    blocked, or that exists and is neither empty nor (with ``overwrite``) a previous gradfix output."""
    check_not_an_input(destination, inputs, "output folder")
    destinations.check_destination(destination, overwrite=overwrite, recognise=is_output_folder)


@contextlib.contextmanager
def atomic_folder(destination: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``destination`` only if the block finishes (see
    :mod:`gradfix_hf.storage.destinations` for what may be replaced)."""
    with destinations.atomic_folder(destination, overwrite=overwrite, recognise=is_output_folder) as temporary:
        yield temporary


def push_output_folder(folder: Path, repo_id: str, *, private: Optional[bool] = None, token: Optional[str] = None,
                       revision: Optional[str] = None, commit_message: Optional[str] = None,
                       commit_description: Optional[str] = None):
    """Push a finished gradfix output folder (it has a report and a model card) to ``repo_id`` in one commit."""
    from .model_card import default_commit_description, default_commit_message  # the model libraries: only now

    folder = Path(folder)
    if ".partial-" in folder.name:
        raise GradFixError(f"{folder} is an unfinished output folder (an interrupted run); it is not pushed.")
    report = read_report(folder)
    if not (folder / "README.md").is_file():
        raise GradFixError(f"{folder}: no README.md (model card); not a complete gradfix output folder.")
    return push_folder(folder, repo_id, private=private, token=token, revision=revision,
                       commit_message=commit_message or default_commit_message(report),
                       commit_description=commit_description or default_commit_description(report))


def write_report(folder: Path, report: dict) -> None:
    """The JSON report (``gradfix_report.json``): what ``gradfix inspect`` and :class:`TransportResult` read."""
    (folder / REPORT_NAME).write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")


def read_report(folder: Path) -> dict:
    """The report of a finished output folder, or a GradFixError saying it is not one."""
    path = Path(folder) / REPORT_NAME
    if not path.is_file():
        raise GradFixError(f"{folder}: no {REPORT_NAME}; not a gradfix output folder.")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise GradFixError(f"{path}: unreadable report ({exc}); not a complete gradfix output folder.") from None