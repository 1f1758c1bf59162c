"""The values of a split's text and label columns, checked whole, on their Arrow columns (no Python loop over rows).

A null text would be voted as the word "None", an empty or whitespace-only one as nothing but special tokens,
and a null label fails late or maps to a class named "None"; each is refused with the split, the column and the
first rows named.
"""
from __future__ import annotations

from typing import Optional, Sequence

from ..errors import DataError

SHOWN_ROWS = 5  # row numbers listed in an error


def _rows(mask) -> list[int]:
    """Indices of the true values of a boolean (chunked) array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    combined = mask.combine_chunks() if isinstance(mask, pa.ChunkedArray) else mask
    return pc.indices_nonzero(pc.fill_null(combined, False)).to_pylist()


def _listed(rows: list[int]) -> str:
    head = ", ".join(str(i) for i in rows[:SHOWN_ROWS])
    more = f" (and {len(rows) - SHOWN_ROWS} more)" if len(rows) > SHOWN_ROWS else ""
    return f"row {head}" if len(rows) == 1 else f"rows {head}{more}"


def _storage(column):
    """The storage of an extension-typed column (``datasets``' ``Json`` feature: values as JSON text)."""
    import pyarrow as pa

    if isinstance(column.type, pa.BaseExtensionType):
        return pa.chunked_array([chunk.storage for chunk in column.chunks], type=column.type.storage_type), True
    return column, False


def _is_text(data_type) -> bool:
    import pyarrow as pa

    checks = (pa.types.is_string, pa.types.is_large_string, getattr(pa.types, "is_string_view", None))
    return any(check is not None and check(data_type) for check in checks)


def _check_text(column, name: str, where: str) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    nulls = _rows(pc.is_null(column))
    if nulls:
        raise DataError(f"{where}: {_listed(nulls)} of text column {name!r}: the text is null (missing). "
                        "Remove or fill these rows.")
    if pa.types.is_null(column.type):
        return  # no rows
    storage, is_json = _storage(column)
    if not _is_text(column.type):
        if is_json and _is_text(storage.type):  # mixed JSON values: strings are stored with their quotes
            others = _rows(pc.invert(pc.starts_with(storage, '"')))
            raise DataError(f"{where}: {_listed(others)} of text column {name!r}: not a string (the column mixes "
                            "text with numbers, lists or objects).")
        raise DataError(f"{where}: text column {name!r} holds {column.type} values, not text. "
                        "Check data.text_column / data.text_pair_column.")
    empty = _rows(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0))
    if empty:
        raise DataError(f"{where}: {_listed(empty)} of text column {name!r}: the text is empty or whitespace "
                        "only. Remove or fill these rows.")


def _check_label(column, name: str, where: str) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    missing = pc.is_null(column, nan_is_null=pa.types.is_floating(column.type))
    rows = _rows(missing)
    if rows:
        raise DataError(f"{where}: {_listed(rows)} of label column {name!r}: the label is null (missing). "
                        "Remove these rows or give them a label.")


def check_values(dataset, text_columns: Sequence[str], label_column: Optional[str], where: str,
                 rows: Optional[int] = None) -> None:
    """Refuse null, empty or whitespace-only texts in ``text_columns`` (and non-text values there) and null or
    NaN labels in ``label_column``, over the first ``rows`` rows of ``dataset`` (default: all), with the rows
    named. ``where`` names the split (e.g. ``"data (train.csv)"``). The columns must exist."""
    columns = list(dict.fromkeys(c for c in [*text_columns, label_column] if c))
    if not columns:
        return
    view = dataset.select_columns(columns).with_format("arrow")
    table = view[:rows] if rows is not None else view[:]
    for name in dict.fromkeys(c for c in text_columns if c):
        _check_text(table.column(name), name, where)
    if label_column:
        _check_label(table.column(label_column), label_column, where)
