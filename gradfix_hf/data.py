"""Labelled samples: load a split (Hub id or local csv/tsv/json/jsonl/parquet), map labels, sample K per class.

Everything here runs before any gradient work, so empty data, a missing column, a class with too few
samples or a label outside the label set fail fast with the file/field named.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import DataError
from .objectives.base import LabelSpace

LOCAL_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass
class LabelledSamples:
    """Rows of a split with their class index, and a fingerprint of exactly what was selected."""

    rows: list[dict]
    labels: list[int]
    source: str
    fingerprint: str

    def __len__(self) -> int:
        return len(self.rows)


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
            return datasets.load_dataset(builder, data_files=str(local), split="train", **kwargs)
        if local.is_dir() and (local / "dataset_info.json").is_file():
            loaded = datasets.load_from_disk(str(local))
            return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        if path.startswith((".", "/", "~")) and not local.exists():
            raise DataError(f"{where}.path: {local} does not exist.")
        if local.is_dir():
            return datasets.load_dataset(str(local), name, split=split)
        from .hub import snapshot_dataset

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
        known = isinstance(exc, (ValueError, KeyError, FileNotFoundError, OSError))
        detail = str(exc) if known else f"{exc.__class__.__name__}: {exc}"
        raise DataError(f"{where}: cannot load split {split!r} of {path!r}: {detail}") from None


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


def _with_commit(dataset, source: str) -> str:
    """``source`` (``repo:split``) with the commit of a Hub data set inserted, when known and missing."""
    hub = getattr(dataset, HUB_PROVENANCE, None)
    if not hub or not hub.get("commit_hash") or "@" in source or not source.startswith(hub["repo_id"] + ":"):
        return source
    return f"{hub['repo_id']}@{hub['commit_hash']}{source[len(hub['repo_id']):]}"


def _check_columns(dataset, columns: list[str], where: str) -> None:
    missing = [c for c in columns if c and c not in dataset.column_names]
    if missing:
        raise DataError(f"{where}: column(s) {missing} not in the data (columns: {dataset.column_names}). "
                        "Set data.text_column / data.label_column / data.text_pair_column.")


def fingerprint(rows: list[dict], labels: list[int], extra: dict) -> str:
    payload = json.dumps({"rows": rows, "labels": labels, **extra}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def label_space_from_rows(dataset, label_column: str) -> LabelSpace:
    """Classes of a user-defined objective: the distinct raw labels present, sorted."""
    values = sorted(set(dataset[label_column]), key=lambda v: (str(type(v)), v))
    lookup = {}
    for i, value in enumerate(values):
        lookup[value] = i
    return LabelSpace(names=[str(v) for v in values], lookup=lookup)


def select_per_class(dataset, data_cfg, label_space: LabelSpace, *, where: str = "data",
                     fingerprint_extra: Optional[dict] = None) -> LabelledSamples:
    """K samples per class, drawn with ``data.seed`` (stratified, reproducible)."""
    columns = [data_cfg.text_column, data_cfg.label_column, data_cfg.text_pair_column]
    source = describe_source(data_cfg.path, data_cfg.split, dataset)
    if len(dataset) == 0:
        raise DataError(f"{where}: {source} is empty (no rows).")
    _check_columns(dataset, columns, f"{where} ({source})")
    by_class: dict[int, list[int]] = {i: [] for i in range(len(label_space.names))}
    for idx, raw in enumerate(dataset[data_cfg.label_column]):
        by_class.setdefault(label_space.index(raw, f"{where} ({source}) row {idx}"), []).append(idx)
    rng = random.Random(data_cfg.seed)
    chosen: list[int] = []
    k = data_cfg.samples_per_class
    for cls in sorted(by_class):
        pool = by_class[cls]
        if len(pool) < k:
            name = label_space.names[cls] if cls < len(label_space.names) else cls
            raise DataError(f"{where}: class {name!r} has {len(pool)} sample(s) in {source}; "
                            f"data.samples_per_class asks for {k}.")
        chosen.extend(rng.sample(pool, k))
    rows = [dataset[i] for i in chosen]
    labels = [label_space.index(r[data_cfg.label_column], where) for r in rows]
    fp = fingerprint([{c: r[c] for c in columns if c} for r in rows], labels, fingerprint_extra or {})
    return LabelledSamples(rows=rows, labels=labels, source=source, fingerprint=fp)


def evaluation_samples(dataset, data_cfg, label_space: LabelSpace, max_samples: Optional[int], source: str,
                       where: str = "evaluation") -> LabelledSamples:
    """All (or the first ``max_samples``) rows of a held-out split, labels checked against the label set."""
    source = _with_commit(dataset, source)
    if len(dataset) == 0:
        raise DataError(f"{where}: the evaluation split {source} is empty.")
    _check_columns(dataset, [data_cfg.text_column, data_cfg.label_column, data_cfg.text_pair_column],
                   f"{where} ({source})")
    count = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    rows = [dataset[i] for i in range(count)]
    labels = [label_space.index(r[data_cfg.label_column], f"{where} ({source}) row {i}") for i, r in enumerate(rows)]
    return LabelledSamples(rows=rows, labels=labels, source=source, fingerprint="")
