"""Read labelled rows from CSV, TSV, JSONL and Parquet files, with errors that name file and line."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import IO, Any, Iterator

from danlu.errors import DanluError

TABLE_SUFFIXES = {".csv", ".tsv", ".jsonl", ".json", ".parquet"}


def _open_text(path: Path) -> IO[str]:
    from danlu.data.textfile import open_text  # UTF-8, or Chinese GB18030/GBK detected

    return open_text(path, newline="")


def table_format(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s not in {".bz2", ".gz"}]
    suffix = suffixes[-1] if suffixes else ""
    if suffix not in TABLE_SUFFIXES:
        raise DanluError(f"{path}: unsupported file type {suffix or '(none)'!r}; "
                         f"use one of {', '.join(sorted(TABLE_SUFFIXES))}")
    return {".json": "jsonl"}.get(suffix, suffix[1:])


def read_table(path: str | Path) -> tuple[list[dict], list[int]]:
    """Rows of a table file as dicts, and the line number (1-based) where each row starts."""
    path = Path(path)
    if not path.exists():
        raise DanluError(f"no such file: {path}")
    if path.is_dir():
        raise DanluError(f"{path} is a folder; expected a CSV/TSV/JSONL/Parquet file")
    fmt = table_format(path)
    try:
        if fmt == "parquet":
            return _read_parquet(path)
        if fmt == "jsonl":
            return _read_jsonl(path)
        return _read_csv(path, delimiter="\t" if fmt == "tsv" else ",")
    except UnicodeDecodeError as e:
        raise DanluError(f"{path}: not valid {e.encoding} text ({e.reason})") from None


def _read_csv(path: Path, delimiter: str) -> tuple[list[dict], list[int]]:
    rows, lines = [], []
    with _open_text(path) as f:
        reader = csv.reader(f, delimiter=delimiter, strict=True)
        try:
            header = next(reader, None)
            if not header:
                raise DanluError(f"{path}: empty file (no header row)")
            header = [h.strip() for h in header]
            start = reader.line_num + 1
            for record in reader:
                if not record:  # blank line
                    start = reader.line_num + 1
                    continue
                if len(record) != len(header):
                    raise DanluError(f"{path}:{start}: malformed row: {len(record)} fields where the "
                                     f"header has {len(header)}")
                rows.append(dict(zip(header, record)))
                lines.append(start)
                start = reader.line_num + 1
        except csv.Error as e:
            raise DanluError(f"{path}:{reader.line_num}: malformed CSV: {e}") from None
    return rows, lines


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line of a JSON Lines file (.bz2/.gz too), streamed;
    a line that is not JSON is a DanluError naming the file and line."""
    with _open_text(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                raise DanluError(f"{path}:{number}: malformed JSON line: {e.msg}") from None


def _read_jsonl(path: Path) -> tuple[list[dict], list[int]]:
    rows, lines = [], []
    for number, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise DanluError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
        lines.append(number)
    return rows, lines


def _read_parquet(path: Path) -> tuple[list[dict], list[int]]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for a broken file
        raise DanluError(f"{path}: cannot read Parquet: {e}") from None
    return rows, list(range(1, len(rows) + 1))  # Parquet has rows, not lines
