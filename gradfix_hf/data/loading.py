"""Load a split of labelled data: a local csv/tsv/json/jsonl/parquet file, a saved ``datasets`` folder, or a Hub
data set pulled pinned to a commit; and the images of image objectives.

Everything here runs before any gradient work, so a missing or empty file, an unknown extension or a missing
image fails fast with the file or field named.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import DataError
from ..hub import snapshot_dataset
from .unreadable import unreadable_line

#: what ``save_to_disk`` writes at the top of a saved Dataset / DatasetDict folder
SAVED_DATASET_FILES = ("dataset_info.json", "dataset_dict.json")
LOCAL_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}

#: attribute set on a data set pulled from the Hub: {"repo_id", "revision", "commit_hash"}
HUB_PROVENANCE = "gradfix_hub_source"


def load_split(path: str, *, name: Optional[str] = None, split: str = "train", revision: Optional[str] = None,
               where: str = "data", token: Optional[str] = None):
    """A ``datasets.Dataset`` from a local file/folder or a Hub dataset id.

    A Hub id is pulled with ``huggingface_hub`` (:func:`gradfix_hf.hub.snapshot_dataset`: the card, then only
    the data files of config ``name``, pinned to the commit ``revision`` resolves to, through the local cache
    and HF_HUB_OFFLINE) and read by ``datasets`` from that snapshot; the data set then carries its repo id and
    commit (``HUB_PROVENANCE``), which the run records.
    """
    import datasets

    local = Path(path).expanduser()
    try:
        if local.is_file():
            builder = LOCAL_BUILDERS.get(local.suffix.lower())
            if builder is None:
                raise DataError(f"{where}.path: {local} has unsupported extension {local.suffix!r} "
                                f"(use {', '.join(LOCAL_BUILDERS)}).")
            kwargs = {"delimiter": "\t"} if local.suffix.lower() == ".tsv" else {}
            loaded = datasets.load_dataset(builder, data_files=str(local), split="train", **kwargs)
            if builder == "json":  # Arrow's JSON reader keeps bytes that are not UTF-8; reading a row would fail
                _check_utf8(loaded, local, where)
            return loaded
        if local.is_dir() and any((local / f).is_file() for f in SAVED_DATASET_FILES):  # save_to_disk's folder
            loaded = datasets.load_from_disk(str(local))
            if isinstance(loaded, datasets.DatasetDict) and split not in loaded:
                raise DataError(f"{where}: no split {split!r} in {local} (splits: {', '.join(loaded)}).")
            return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        if path.startswith((".", "/", "~")) and not local.exists():
            raise DataError(f"{where}.path: {local} does not exist.")
        if local.is_dir():
            return datasets.load_dataset(str(local), name, split=split)
        folder, commit = snapshot_dataset(path, name=name, revision=revision, token=token, where=where,
                                          error=DataError)
        loaded = datasets.load_dataset(str(folder), name, split=split)
        setattr(loaded, HUB_PROVENANCE, {"repo_id": path, "revision": revision, "commit_hash": commit})
        return loaded
    except DataError:
        raise
    except Exception as exc:  # datasets also raises its own hierarchy (DatasetNotFoundError, ...)
        if local.is_file() and _has_no_rows(local):  # datasets' own message for this is cryptic
            raise DataError(f"{where}.path: {local} is empty (no data rows).") from None
        bad_line = unreadable_line(local, exc) if local.is_file() else None  # file:line: why it cannot be parsed
        if bad_line is not None:
            raise DataError(f"{where}.path: {bad_line}.") from None
        exc = _innermost(exc)
        known = isinstance(exc, (ValueError, KeyError, FileNotFoundError, OSError))
        detail = str(exc) if known else f"{exc.__class__.__name__}: {exc}"
        raise DataError(f"{where}: cannot load split {split!r} of {path!r}: {detail}") from None


def split_names(path: str, *, name: Optional[str] = None, revision: Optional[str] = None, where: str = "data",
                token: Optional[str] = None) -> list[str]:
    """The splits of a data set: ``["train"]`` for a local file (which is one split), the splits of a saved
    ``DatasetDict`` folder, or those ``datasets`` finds in a folder of data files or a Hub data set (pulled as
    :func:`load_split` pulls it)."""
    import datasets

    local = Path(path).expanduser()
    if local.is_file():
        return ["train"]
    try:
        if local.is_dir() and any((local / f).is_file() for f in SAVED_DATASET_FILES):  # save_to_disk's folder
            loaded = datasets.load_from_disk(str(local))
            return list(loaded) if isinstance(loaded, datasets.DatasetDict) else ["train"]  # a Dataset: one split
        if path.startswith((".", "/", "~")) and not local.exists():
            raise DataError(f"{where}.path: {local} does not exist.")
        folder = local if local.is_dir() else snapshot_dataset(path, name=name, revision=revision, token=token,
                                                                where=where, error=DataError)[0]
        return list(datasets.load_dataset(str(folder), name).keys())
    except DataError:
        raise
    except Exception as exc:  # datasets' own hierarchy
        raise DataError(f"{where}: cannot list the splits of {path!r}: {_innermost(exc)}") from None


def _check_utf8(dataset, local: Path, where: str) -> None:
    """Refuse a loaded JSON file whose strings are not UTF-8 (one native pass over the table), naming the line."""
    import pyarrow as pa

    try:
        dataset.data.table.validate(full=True)
    except pa.ArrowInvalid as exc:
        bad_line = unreadable_line(local)
        raise DataError(f"{where}.path: {bad_line or f'{local}: {exc}'}.") from None


def _innermost(exc: BaseException) -> BaseException:
    """The cause behind ``datasets``' generic wrapper ("An error occurred while generating the dataset")."""
    import datasets

    while isinstance(exc, datasets.exceptions.DatasetGenerationError) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _has_no_rows(local: Path) -> bool:
    """True for a csv/tsv with at most a header line, or a json/jsonl holding nothing (or ``[]``)."""
    suffix = local.suffix.lower()
    if suffix == ".parquet":
        return local.stat().st_size == 0
    try:
        with open(local, "rb") as handle:
            head = handle.read(1 << 16)
            if handle.read(1):
                return False  # large file: not empty
    except OSError:
        return False
    lines = [line for line in head.decode("utf-8", "replace").splitlines() if line.strip()]
    if suffix in (".csv", ".tsv"):
        return len(lines) <= 1
    return not lines or "".join(lines).replace(" ", "") == "[]"


def describe_source(path: str, split: str, dataset=None) -> str:
    """``path`` for a local file, ``path:split`` for a saved DatasetDict, ``repo@commit:split`` for a Hub
    data set (when ``dataset`` carries its provenance), else ``path:split``."""
    if Path(path).expanduser().is_file():
        return path
    hub = getattr(dataset, HUB_PROVENANCE, None) if dataset is not None else None
    if hub and hub.get("commit_hash"):
        return f"{hub['repo_id']}@{hub['commit_hash']}:{split}"
    return f"{path}:{split}"


def with_commit(dataset, source: str) -> str:
    """``source`` (``repo:split``) with the commit of a Hub data set inserted, when known and missing."""
    hub = getattr(dataset, HUB_PROVENANCE, None)
    if not hub or not hub.get("commit_hash") or "@" in source or not source.startswith(hub["repo_id"] + ":"):
        return source
    return f"{hub['repo_id']}@{hub['commit_hash']}{source[len(hub['repo_id']):]}"


def with_images(dataset, column: str, path: str, where: str = "data"):
    """``dataset`` with ``column`` as a decoded ``datasets.Image`` feature, for image objectives.

    An Image feature (``imagefolder``, parquet written by ``datasets``, Hub image data sets) is used as is;
    strings are image file paths (relative ones are relative to the folder of the data file ``path``), checked
    to exist and cast to an Image feature. Needs Pillow (``pip install gradfix_hf[vision]``).
    """
    import importlib.util

    import datasets

    if column not in dataset.column_names:
        raise DataError(f"{where}: image column {column!r} not in the data (columns: {dataset.column_names}). "
                        "Set data.image_column.")
    if importlib.util.find_spec("PIL") is None:
        raise DataError(f"{where}: reading images needs Pillow: pip install 'gradfix_hf[vision]'.")
    feature = dataset.features[column]
    if isinstance(feature, datasets.Image):
        return dataset if feature.decode else dataset.cast_column(column, datasets.Image())
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        raise DataError(f"{where}: image column {column!r} holds {feature}, not images (an Image feature or "
                        "image file paths).")
    local = Path(path).expanduser()
    base = local.parent if local.is_file() else local

    def resolve(value):
        if value is None or "://" in value or Path(value).expanduser().is_absolute():
            return value
        return str(base / value)

    resolved = [resolve(v) for v in dataset[column]]
    for i, value in enumerate(resolved):
        if value is None or ("://" not in value and not Path(value).expanduser().is_file()):
            raise DataError(f"{where}: row {i} of column {column!r}: image file {value!r} does not exist.")
    return dataset.remove_columns(column).add_column(column, resolved).cast_column(column, datasets.Image())