"""Opening the user's text files in the encoding they were written in.

UTF-8 (with or without a byte-order mark) is read as is. A file that is not UTF-8 but decodes as
GB18030 (the superset of GBK and GB2312 that Chinese Windows tools write) with mostly common Chinese
characters is read as GB18030, with a note on stderr naming the encoding; UTF-16 with a byte-order
mark likewise. Anything else is refused with a one-line error that names the encoding problem. Only
the first MiB is examined, so detection costs the same for any size of file.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import sys
from pathlib import Path
from typing import IO

from danlu.errors import DanluError

SNIFF_BYTES = 1 << 20
# A GB2312 character whose first byte is in A1-A3 (punctuation, full-width forms) or B0-D7 (the 3,755
# level-1 characters, ~99% of running Chinese text). Latin-1 accented letters misread as GB18030 land
# elsewhere, so this tells Chinese from mis-encoded European text.
_COMMON_GB_LEADS = set(range(0xA1, 0xA4)) | set(range(0xB0, 0xD8))
MIN_COMMON_SHARE = 0.8
_NOTED: set[str] = set()  # files whose encoding note was printed (once per process)


def _note(path: Path, message: str) -> None:
    if str(path) not in _NOTED:
        _NOTED.add(str(path))
        print(f"note: {path} {message}", file=sys.stderr)


def _open_binary(path: Path) -> IO[bytes]:
    if path.suffix == ".bz2":
        return bz2.open(path, "rb")
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _decodes(raw: bytes, encoding: str) -> str | None:
    """`raw` decoded (a character cut at the end of the sample is allowed), or None."""
    try:
        return codecs.getincrementaldecoder(encoding)().decode(raw, final=False)
    except UnicodeDecodeError:
        return None


def common_chinese_share(text: str) -> float:
    """The share of the non-ASCII characters of `text` that are common Chinese characters or CJK
    punctuation (GB2312 level 1 and symbols); 0.0 when there are none."""
    non_ascii = [ch for ch in text if ord(ch) > 127]
    if not non_ascii:
        return 0.0
    common = 0
    for ch in non_ascii:
        try:
            common += ch.encode("gb2312")[0] in _COMMON_GB_LEADS
        except UnicodeEncodeError:
            pass
    return common / len(non_ascii)


def detect_encoding(path: str | Path) -> str:
    """The encoding to read `path` with: utf-8, utf-8-sig, utf-16 or gb18030; a DanluError for others."""
    path = Path(path)
    with _open_binary(path) as f:
        raw = f.read(SNIFF_BYTES)
    if raw.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        _note(path, "is UTF-16 (byte-order mark); it is read as UTF-16")
        return "utf-16"
    if b"\x00" in raw:
        raise DanluError(f"{path}: not UTF-8 text: it has NUL bytes (UTF-16 without a byte-order mark, or a "
                         "binary file); save it as UTF-8")
    if _decodes(raw, "utf-8") is not None:
        return "utf-8"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        where = f"{e.reason} at byte {e.start}"
    text = _decodes(raw, "gb18030")
    if text is not None and common_chinese_share(text) >= MIN_COMMON_SHARE:
        _note(path, "is not UTF-8; it is read as GB18030 (Chinese GBK/GB2312)")
        return "gb18030"
    raise DanluError(f"{path}: not UTF-8 text ({where}) nor Chinese GB18030/GBK; save it as UTF-8 "
                     "(e.g. iconv -f ENCODING -t UTF-8)")


def open_text(path: str | Path, newline: str | None = None) -> IO[str]:
    """`path` (also .bz2/.gz) opened for reading text in its detected encoding."""
    path = Path(path)
    encoding = detect_encoding(path)
    if path.suffix == ".bz2":
        return bz2.open(path, "rt", encoding=encoding, newline=newline)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding=encoding, newline=newline)
    return open(path, encoding=encoding, newline=newline)


def read_text(path: str | Path) -> str:
    """The whole text of `path` in its detected encoding; decoding errors are one-line DanluErrors."""
    try:
        with open_text(path) as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise DanluError(f"{path}: not valid {e.encoding} text ({e.reason})") from None
