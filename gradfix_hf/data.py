"""Labelled samples: load a split (Hub id or local csv/tsv/json/jsonl/parquet), map labels, sample K per class.

Everything here runs before any gradient work, so empty data, a missing column, a class with too few
samples or a label outside the label set fail fast with the file/field named.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import DataError
from .objectives.base import LabelSpace
from .selection import ALGORITHMS, Embedder

LOCAL_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass
class LabelledSamples:
    """Rows of a split with their class index, and a fingerprint of exactly what was selected."""

    rows: list[dict]
    labels: list[int]
    source: str
    fingerprint: str
    indices: list[int] = field(default_factory=list)  # each row's index in the split
    selection: Optional[dict] = None  # how the rows were chosen: {"method", "pool", ...} (gradfix_hf/selection.py)

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
    payload = json.dumps({"rows": rows, "labels": labels, **extra}, sort_keys=True, default=_content)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _content(value) -> object:
    """What a fingerprint records for a value JSON cannot write: images and bytes by a hash of their content
    (``str`` of a PIL image holds its memory address, so it would change from run to run), else ``str``."""
    if type(value).__module__.startswith("PIL.") and hasattr(value, "tobytes"):
        header = f"{value.mode}:{value.size[0]}x{value.size[1]}:".encode()
        return {"image_sha256": hashlib.sha256(header + value.tobytes()).hexdigest()}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"bytes_sha256": hashlib.sha256(bytes(value)).hexdigest()}
    return str(value)


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


def label_space_from_rows(dataset, label_column: str) -> LabelSpace:
    """Classes of a user-defined objective: the distinct raw labels present, sorted."""
    values = sorted(set(dataset[label_column]), key=lambda v: (str(type(v)), v))
    lookup = {}
    for i, value in enumerate(values):
        lookup[value] = i
    return LabelSpace(names=[str(v) for v in values], lookup=lookup)


def select_per_class(dataset, data_cfg, label_space: LabelSpace, *, where: str = "data",
                     fingerprint_extra: Optional[dict] = None,
                     embed: Optional[Embedder] = None, columns: Optional[list[str]] = None) -> LabelledSamples:
    """K samples per class: drawn with ``data.seed`` (``data.selection: random``, stratified, reproducible), or
    chosen by ``data.selection`` on ``embed(rows, labels)`` of a seeded pool per class (gradfix_hf/selection.py).

    Without ``embed`` a non-random selection only checks the class sizes and returns no rows (a dry run).
    ``columns`` are those the objective reads (default: the text, text pair and label columns).
    """
    columns = columns or [data_cfg.text_column, data_cfg.label_column, data_cfg.text_pair_column]
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
    method = getattr(data_cfg, "selection", "random")
    pools: dict[int, list[int]] = {}
    for cls in sorted(by_class):
        pool = by_class[cls]
        if len(pool) < k:
            name = label_space.names[cls] if cls < len(label_space.names) else cls
            raise DataError(f"{where}: class {name!r} has {len(pool)} sample(s) in {source}; "
                            f"data.samples_per_class asks for {k}.")
        if method == "random":
            chosen.extend(rng.sample(pool, k))
        else:  # the rows embedded for this class: at most selection_pool, drawn with the seed, in split order
            cap = data_cfg.selection_pool
            pools[cls] = sorted(rng.sample(pool, cap)) if cap is not None and len(pool) > cap else pool
    selection: dict = {"method": method}
    extra = dict(fingerprint_extra or {})
    if method != "random":  # random keeps the fingerprint it always had
        selection["pool"] = data_cfg.selection_pool
        extra.update(selection=method, selection_pool=data_cfg.selection_pool)
        if embed is None:
            selection.update(deferred=True, planned_samples=k * len(pools))
            return LabelledSamples(rows=[], labels=[], source=source, fingerprint="", selection=selection)
        chosen = _choose_on_embeddings(dataset, pools, k, method, embed, where, label_space)
    rows = [dataset[i] for i in chosen]
    labels = [label_space.index(r[data_cfg.label_column], where) for r in rows]
    fp = fingerprint([{c: r[c] for c in columns if c} for r in rows], labels, extra)
    return LabelledSamples(rows=rows, labels=labels, source=source, fingerprint=fp, indices=chosen,
                           selection=selection)


def _choose_on_embeddings(dataset, pools: dict[int, list[int]], k: int, method: str, embed: Embedder,
                          where: str, label_space: LabelSpace) -> list[int]:
    """Embed every class's pool in one call, then pick K rows per class with the selection algorithm."""
    order = [i for cls in sorted(pools) for i in pools[cls]]
    classes = [cls for cls in sorted(pools) for _ in pools[cls]]
    embeddings = embed([dataset[i] for i in order], classes)
    chosen: list[int] = []
    start = 0
    for cls in sorted(pools):
        pool = pools[cls]
        name = label_space.names[cls] if cls < len(label_space.names) else cls
        picks = ALGORITHMS[method](embeddings[start:start + len(pool)], k,
                                   where=f"{where}.selection {method!r} (class {name!r})")
        chosen.extend(pool[j] for j in picks)
        start += len(pool)
    return chosen


def evaluation_samples(dataset, data_cfg, label_space: LabelSpace, max_samples: Optional[int], source: str,
                       where: str = "evaluation", columns: Optional[list[str]] = None) -> LabelledSamples:
    """All (or the first ``max_samples``) rows of a held-out split, labels checked against the label set."""
    source = _with_commit(dataset, source)
    if len(dataset) == 0:
        raise DataError(f"{where}: the evaluation split {source} is empty.")
    _check_columns(dataset, columns or [data_cfg.text_column, data_cfg.label_column, data_cfg.text_pair_column],
                   f"{where} ({source})")
    count = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    rows = [dataset[i] for i in range(count)]
    labels = [label_space.index(r[data_cfg.label_column], f"{where} ({source}) row {i}") for i, r in enumerate(rows)]
    return LabelledSamples(rows=rows, labels=labels, source=source, fingerprint="")
