"""Text cleaning for pretraining corpora: Unicode normalisation, control characters, boilerplate,
length filtering, and sentence boundaries (which next-sentence prediction needs)."""

from __future__ import annotations

import re
import unicodedata

# Short lines that are site furniture, not text (cookie banners, share buttons, legal footers).
BOILERPLATE = re.compile(
    r"(cookie|all rights reserved|privacy policy|terms of (use|service)|click here|subscribe|sign up|"
    r"log ?in|javascript|share (this|on)|follow us|read more|advertisement|copyright ©|©\s*\d{4}|"
    r"skip to (main )?content|retrieved from|this page was last edited|版权所有|隐私政策|点击这里)", re.I)
BOILERPLATE_MAX_CHARS = 120  # a long line mentioning "cookie" is probably prose
_KEEP_CONTROL = {"\n", "\t"}
_SPACES = re.compile(r"[ \t\u3000]+")
_BLANK_LINES = re.compile(r"\n{3,}")
# A sentence ends at . ! ? (and their CJK forms) followed by space, or at a CJK full stop directly,
# or at a line break. The whitespace after the end belongs to the next sentence.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*(?=\s)|(?<=[。！？；])[」』”）]*|(?=\n)")


def normalize(text: str) -> str:
    """NFKC, control and format characters removed, spaces collapsed, lines stripped."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if ch in _KEEP_CONTROL
                   or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn"))
    text = text.replace("\t", " ")
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def drop_boilerplate(text: str) -> str:
    """Remove short lines that are page furniture (banners, footers, share buttons)."""
    return "\n".join(line for line in text.split("\n")
                     if not (len(line) <= BOILERPLATE_MAX_CHARS and BOILERPLATE.search(line)))


def clean_document(text: str, min_length: int) -> str | None:
    """The cleaned document, or None when it is shorter than `min_length` characters after cleaning."""
    text = drop_boilerplate(normalize(text)).strip()
    return text if len(text) >= min_length else None


def split_sentences(text: str) -> list[str]:
    """Sentences of a document, in order; concatenated they give the document back exactly.

    Whitespace after a sentence end is kept at the start of the next sentence, so a byte-level
    tokenizer sees " Next" as it would inside the document.
    """
    sentences, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        end = match.end()
        if end > start and text[start:end].strip():
            sentences.append(text[start:end])
            start = end
    if text[start:].strip():
        sentences.append(text[start:])
    elif sentences:
        sentences[-1] += text[start:]
    return sentences
