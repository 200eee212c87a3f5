"""Terminal column widths of text, so tables line up when they hold Chinese, Japanese or Korean text.

A CJK ideograph or full-width form takes two columns of a terminal, a combining mark or a zero-width
character none; `str.ljust` and slicing count characters, so a column of Chinese text ends up twice as
wide as intended and the columns after it drift. These helpers count columns instead.
"""

from __future__ import annotations

import unicodedata


def char_width(ch: str) -> int:
    """Columns one character takes: 2 for wide and full-width (East Asian Width W/F), 0 for combining and
    zero-width format characters, else 1."""
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def display_width(text: str) -> int:
    """Columns `text` takes on a terminal."""
    return sum(char_width(ch) for ch in text)


def truncate(text: str, width: int, ellipsis: str = "…") -> str:
    """`text` cut to at most `width` columns, ending in `ellipsis` when something was cut."""
    if display_width(text) <= width:
        return text
    room, out, used = width - display_width(ellipsis), [], 0
    for ch in text:
        w = char_width(ch)
        if used + w > room:
            break
        out.append(ch)
        used += w
    return "".join(out) + ellipsis


def pad(text: str, width: int) -> str:
    """`text` followed by spaces up to `width` columns (nothing added when it is already as wide)."""
    return text + " " * max(0, width - display_width(text))
