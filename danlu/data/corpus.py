"""Reading raw pretraining corpora: packaged names, .txt/.jsonl/.parquet files (also .bz2/.gz),
MediaWiki XML dumps, word/POS-tagged text (People's Daily style), and folders of those. Yields
documents as plain strings. Text files are UTF-8, or Chinese GB18030/GBK detected (danlu/data/textfile.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import IO, Iterator

from danlu.errors import DanluError, did_you_mean

TEXT_SUFFIXES = {".txt", ".jsonl", ".json", ".parquet", ".xml"}
CORPORA = {"wiki-sample": "wiki-sample", "peoples-daily": "peoples-daily"}  # name -> packaged asset (danlu/assets.py)
# One token of a word/POS-tagged corpus: `word/tag`, also opening `[word/tag` and closing `word/tag]NT` of a
# bracketed compound (the PKU People's Daily annotation).
_TAGGED_TOKEN = re.compile(r"\[?(?P<word>.+?)/[A-Za-z]{1,4}(?:\][A-Za-z]{1,4})?")
_LATIN_OR_DIGIT = re.compile(r"[A-Za-z0-9\uff10-\uff19\uff21-\uff3a\uff41-\uff5a]")  # also full-width forms


def _base_suffix(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s not in {".bz2", ".gz"}]
    return suffixes[-1].lower() if suffixes else ""


def _open_text(path: Path) -> IO[str]:
    from danlu.data.textfile import open_text

    return open_text(path)


def resolve_corpus(source: str) -> list[Path]:
    """The files behind one CORPUS argument (a packaged name, a file or a folder), in a stable order; a text
    file in an encoding danlu cannot read is refused here, before any work (danlu/data/textfile.py)."""
    from danlu.data.textfile import detect_encoding

    files = _corpus_files(source)
    for file in files:
        if _base_suffix(file) != ".parquet":
            detect_encoding(file)
    return files


def _corpus_files(source: str) -> list[Path]:
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

    .txt: documents are separated by blank lines, except in a word/POS-tagged file (`word/tag` tokens
    separated by spaces, as the People's Daily corpus), where each line is a paragraph and one document
    (the packaged file marks no article boundaries): its tags stripped and its words joined without
    spaces (a space kept only between two Latin words or numbers, half- or full-width);
    .jsonl/.parquet: the `text_field` of each record; a MediaWiki XML dump: the plain text of each article.
    """
    suffix = _base_suffix(path)
    try:
        if suffix == ".xml" or (suffix not in TEXT_SUFFIXES and is_wiki_dump(path)):
            from danlu.data.wikitext import iter_articles

            yield from iter_articles(path)
        elif suffix == ".txt":
            yield from (_iter_tagged_lines(path) if is_tagged_text(path) else _iter_paragraph_blocks(path))
        elif suffix in (".jsonl", ".json"):
            yield from _iter_jsonl(path, text_field)
        elif suffix == ".parquet":
            yield from _iter_parquet(path, text_field)
        else:
            raise DanluError(f"{path}: unsupported corpus file type")
    except UnicodeDecodeError as e:
        raise DanluError(f"{path}: not valid {e.encoding} text ({e.reason})") from None


def strip_tags(line: str) -> str | None:
    """The raw text of one line of a word/POS-tagged corpus (`迈向/v  充满/v  希望/n` -> `迈向充满希望`),
    or None when a token of the line is not `word/tag`."""
    words = []
    for token in line.split():
        match = _TAGGED_TOKEN.fullmatch(token)
        if match is None:
            return None
        words.append(match["word"])
    text = ""
    for word in words:
        if text and _LATIN_OR_DIGIT.match(text[-1]) and _LATIN_OR_DIGIT.match(word[0]):
            text += " "  # "Windows/nx 98/m" and a table's "917.02/m 914.06/m" stay two words
        text += word
    return text


def is_tagged_text(path: Path, sample_lines: int = 20) -> bool:
    """True when the first non-blank lines of a .txt file are all `word/tag` tokens, two or more a line
    on average (a list of URLs is not a tagged corpus)."""
    lines = []
    with _open_text(path) as f:
        for line in f:
            if line.strip():
                lines.append(line)
                if len(lines) == sample_lines:
                    break
    tokens = sum(len(line.split()) for line in lines)
    return bool(lines) and tokens >= 2 * len(lines) and all(strip_tags(line) is not None for line in lines)


def _iter_tagged_lines(path: Path) -> Iterator[str]:
    with _open_text(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            text = strip_tags(line)
            if text is None:
                raise DanluError(f"{path}:{number}: not a word/tag token line like the lines above it")
            yield text


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
