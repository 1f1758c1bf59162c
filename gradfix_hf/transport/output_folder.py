"""The output folder: written into a hidden temporary folder next to the destination and renamed into place at
the end, so an interrupted run never leaves a folder that looks finished; its JSON report; and its push to the
Hub in one commit. What goes in it is written by :mod:`.run`; its model card by :mod:`.model_card`.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional

from ..errors import GradFixError
from ..hub import push_folder
from .model_card import default_commit_description, default_commit_message

REPORT_NAME = "gradfix_report.json"
RECIPE_NAME = "gradfix_recipe.yaml"


def check_destination(destination: Path, overwrite: bool = False) -> None:
    """Refuse, before any work, an output path that is a file, lies under a file, or is a non-empty folder."""
    destination = Path(destination)
    if destination.exists() and not destination.is_dir():
        raise GradFixError(f"output folder {destination} is an existing file, not a folder.")
    blocking = next((p for p in destination.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise GradFixError(f"output folder {destination} cannot be created: {blocking} is a file.")
    if destination.is_dir() and any(destination.iterdir()) and not overwrite:
        raise GradFixError(f"output folder {destination} already exists and is not empty (use --overwrite).")


@contextlib.contextmanager
def atomic_folder(destination: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``destination`` only if the block finishes."""
    destination = Path(destination)
    check_destination(destination, overwrite)
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.partial-"))
    try:
        yield tmp
        if destination.exists():
            shutil.rmtree(destination)
        os.replace(tmp, destination)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def push_output_folder(folder: Path, repo_id: str, *, private: Optional[bool] = None, token: Optional[str] = None,
                       revision: Optional[str] = None, commit_message: Optional[str] = None,
                       commit_description: Optional[str] = None):
    """Push a finished gradfix output folder (it has a report and a model card) to ``repo_id`` in one commit."""
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
    return json.loads(path.read_text())