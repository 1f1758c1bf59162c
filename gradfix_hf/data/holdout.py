"""A validation split carved from the data split when the data has none (``data.validation_size``).

Why: a rebase (and any recipe with one local file) needs held-out rows to choose the method and α on, and a
user's single ``train.jsonl`` has no other split. The carve is ``datasets``' own seeded
``Dataset.train_test_split``, stratified by class for classification data, so it is the same rows on every run
and every process; the vote then draws its rows from the rest only, so no row both votes and scores.
"""
from __future__ import annotations

from collections import Counter
from typing import Optional, Union

from ..errors import DataError

#: the name under which the carved rows are scored (``evaluation.split`` when ``data.validation_size`` is set)
CARVED_SPLIT = "validation"


def carved_size(size: Union[int, float], rows: int, where: str = "data.validation_size") -> int:
    """How many of ``rows`` rows a ``validation_size`` carves: a fraction in (0, 1) or a row count, leaving at
    least one row on each side."""
    count = round(size * rows) if isinstance(size, float) else int(size)
    count = max(count, 1)
    if count >= rows:
        raise DataError(f"{where}: carving {count} validation row(s) from {rows} leaves none to vote on; use a "
                        "smaller size, or give a validation split (evaluation.path / evaluation.split).")
    return count


def carve_validation(dataset, size: Union[int, float], seed: int, *, label_column: Optional[str] = None,
                     where: str = "data.validation_size"):
    """``(rest, validation)``: ``size`` rows (a fraction or a count) drawn with ``seed`` from ``dataset``, each
    side in the data's order; stratified by ``label_column`` when given and every class can give a row to each
    side. The rows themselves are untouched (the strata are computed on a copy of the labels)."""
    import datasets

    count = carved_size(size, len(dataset), where)
    columns = {"row": list(range(len(dataset)))}
    stratify = None
    if label_column is not None and label_column in dataset.column_names:
        labels = [str(v) for v in dataset[label_column]]
        counts = Counter(labels)
        if min(counts.values()) >= 2 and len(counts) <= count <= len(dataset) - len(counts):
            columns["stratum"], stratify = labels, "stratum"
    index = datasets.Dataset.from_dict(columns)
    if stratify:
        index = index.class_encode_column(stratify)
    split = index.train_test_split(test_size=count, seed=seed, shuffle=True, stratify_by_column=stratify)
    return dataset.select(sorted(split["train"]["row"])), dataset.select(sorted(split["test"]["row"]))
