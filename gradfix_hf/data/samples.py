"""Labelled samples: map labels onto the label set, take K per class (seeded, or chosen on θ_B's embeddings),
take a held-out split, and fingerprint exactly what was selected.

Everything here runs before any gradient work, so empty data, a missing column, a class with too few
samples or a label outside the label set fail fast with the file/field named.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..errors import DataError
from ..objectives import LabelSpace
from .loading import describe_source, with_commit
from .selection import ALGORITHMS, Embedder
from .values import check_values


@dataclass
class LabelledSamples:
    """Rows of a split with their class index, and a fingerprint of exactly what was selected."""

    rows: list[dict]
    labels: list[int]
    source: str
    fingerprint: str
    indices: list[int] = field(default_factory=list)  # each row's index in the split
    selection: Optional[dict] = None  # how the rows were chosen: {"method", "pool", ...} (gradfix_hf/data/selection.py)
    encoded: Optional[list] = field(default=None, repr=False)  # the rows encoded once by a scorer, kept for the next

    def __len__(self) -> int:
        return len(self.rows)


def check_columns(dataset, columns: list[str], where: str) -> None:
    missing = [c for c in columns if c and c not in dataset.column_names]
    if missing:
        raise DataError(f"{where}: column(s) {missing} not in the data (columns: {dataset.column_names}). "
                        "Set data.text_column / data.label_column / data.text_pair_column.")


def default_text_columns(data_cfg, columns: Optional[list[str]]) -> list[str]:
    """The text and text pair columns, of those in ``columns`` (the columns an objective reads) when given."""
    texts = [c for c in (data_cfg.text_column, data_cfg.text_pair_column) if c]
    return texts if columns is None else [c for c in texts if c in columns]


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



def label_space_from_rows(dataset, label_column: str) -> LabelSpace:
    """Classes of a user-defined objective: the distinct raw labels present (null ones are refused when the rows
    are selected), sorted."""
    values = sorted(set(dataset[label_column]) - {None}, key=lambda v: (str(type(v)), v))
    lookup = {}
    for i, value in enumerate(values):
        lookup[value] = i
    return LabelSpace(names=[str(v) for v in values], lookup=lookup)


def select_per_class(dataset, data_cfg, label_space: LabelSpace, *, where: str = "data",
                     fingerprint_extra: Optional[dict] = None,
                     embed: Optional[Embedder] = None, columns: Optional[list[str]] = None,
                     text_columns: Optional[Sequence[str]] = None) -> LabelledSamples:
    """K samples per class: drawn with ``data.seed`` (``data.selection: random``, stratified, reproducible), or
    chosen by ``data.selection`` on ``embed(rows, labels)`` of a seeded pool per class (gradfix_hf/data/selection.py).

    Without ``embed`` a non-random selection only checks the class sizes and returns no rows (a dry run).
    ``columns`` are those the objective reads (default: the text, text pair and label columns), ``text_columns``
    those it tokenizes as text (default: the text and text pair columns among ``columns``): null or empty texts
    and null labels anywhere in the split are refused with their rows named.
    """
    if text_columns is None:
        text_columns = default_text_columns(data_cfg, columns)
    columns = columns or [data_cfg.text_column, data_cfg.label_column, data_cfg.text_pair_column]
    source = describe_source(data_cfg.path, data_cfg.split, dataset)
    if len(dataset) == 0:
        raise DataError(f"{where}: {source} is empty (no rows).")
    check_columns(dataset, list(dict.fromkeys([*columns, *text_columns])), f"{where} ({source})")
    check_values(dataset, text_columns, data_cfg.label_column, f"{where} ({source})")
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
        chosen = choose_on_embeddings(dataset, pools, k, method, embed, where, label_space)
    rows = [dataset[i] for i in chosen]
    labels = [label_space.index(r[data_cfg.label_column], where) for r in rows]
    fp = fingerprint([{c: r[c] for c in columns if c} for r in rows], labels, extra)
    return LabelledSamples(rows=rows, labels=labels, source=source, fingerprint=fp, indices=chosen,
                           selection=selection)


def choose_on_embeddings(dataset, pools: dict[int, list[int]], k: int, method: str, embed: Embedder,
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
                       where: str = "evaluation", columns: Optional[list[str]] = None,
                       text_columns: Optional[Sequence[str]] = None) -> LabelledSamples:
    """All (or the first ``max_samples``) rows of a held-out split, labels checked against the label set and
    texts (``text_columns``, as for :func:`select_per_class`) and labels checked for null or empty values."""
    source = with_commit(dataset, source)
    if len(dataset) == 0:
        raise DataError(f"{where}: the evaluation split {source} is empty.")
    if text_columns is None:
        text_columns = default_text_columns(data_cfg, columns)
    columns = columns or [data_cfg.text_column, data_cfg.label_column, data_cfg.text_pair_column]
    check_columns(dataset, list(dict.fromkeys([*columns, *text_columns])), f"{where} ({source})")
    count = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    check_values(dataset, text_columns, data_cfg.label_column, f"{where} ({source})", rows=count)
    rows = [dataset[i] for i in range(count)]
    labels = [label_space.index(r[data_cfg.label_column], f"{where} ({source}) row {i}") for i, r in enumerate(rows)]
    return LabelledSamples(rows=rows, labels=labels, source=source, fingerprint="")