"""Why ``datasets`` could not parse a local data file, as ``file:line: reason``.

Only called after ``datasets.load_dataset`` failed, or after a loaded JSON file's table held strings that are not
UTF-8 (Arrow's JSON reader keeps them; reading the row would fail later): the happy path reads nothing twice. The
file is streamed once for bytes that are not UTF-8 and, for JSON, once for the first line that is not valid JSON,
so the error names the file and the line instead of ``datasets``' own "An error occurred while generating the
dataset".
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator, Optional

TEXT_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl")
_CSV_LINE = re.compile(r"\bline (\d+)\b")


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as handle:
        yield from enumerate(handle, 1)


def first_non_utf8_line(path: Path) -> Optional[str]:
    """``line: reason`` for the first line holding bytes that are not UTF-8, or None."""
    for number, line in _lines(path):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            return (f"{number}: not valid UTF-8 (byte {line[exc.start]:#04x} at byte {exc.start + 1} of the line); "
                    "save the file as UTF-8")
    return None


def _json_error(exc: json.JSONDecodeError) -> str:
    return f"not valid JSON ({exc.msg} at column {exc.colno})"


def _kind(value) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return {dict: "an object", list: "an array", str: "a string"}.get(type(value), "a number")


def first_bad_json_line(path: Path) -> Optional[str]:
    """``line: reason`` for the first line of JSON lines that is not one JSON object, or for where a JSON document
    (an array or an object over several lines) stops being valid JSON; None when it all parses."""
    lines = ((number, raw.decode("utf-8").rstrip("\r\n")) for number, raw in _lines(path))
    filled = ((number, text) for number, text in lines if text.strip())
    first = next(filled, None)
    if first is None:
        return None
    try:
        first_value = json.loads(first[1])
    except json.JSONDecodeError:  # a document spread over several lines ("[" alone on line 1): parse it whole
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            return f"{exc.lineno}: {_json_error(exc)}"
        return None
    one_object = "each line must be one JSON object"
    for index, (number, text) in enumerate(filled):  # JSON lines: a single line may be a whole document
        if index == 0 and not isinstance(first_value, dict):
            return f"{first[0]}: {_kind(first_value)}, not an object; {one_object}"
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            return f"{number}: {_json_error(exc)}; {one_object}"
        if not isinstance(value, dict):
            return f"{number}: {_kind(value)}, not an object; {one_object}"
    return None


def csv_line(path: Path, exc: BaseException) -> Optional[str]:
    """``line: reason`` from the pandas parser error behind a failed csv/tsv load (it names the line), or None."""
    for _ in range(8):  # the chain of causes, datasets' wrapper first
        if exc is None:
            break
        found = _CSV_LINE.search(str(exc)) if type(exc).__name__ == "ParserError" else None
        if found:
            return f"{found.group(1)}: not valid {path.suffix[1:].upper()} ({str(exc).strip()})"
        exc = exc.__cause__ or exc.__context__
    return None


def unreadable_line(path: Path, exc: Optional[BaseException] = None) -> Optional[str]:
    """``file:line: reason`` for a csv/tsv/json/jsonl file ``datasets`` failed to parse (``exc``), else None."""
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        return None
    try:
        found = first_non_utf8_line(path)
        if found is None and suffix in (".json", ".jsonl"):
            found = first_bad_json_line(path)
        if found is None and suffix in (".csv", ".tsv") and exc is not None:
            found = csv_line(path, exc)
    except OSError:
        return None
    return f"{path}:{found}" if found else None
