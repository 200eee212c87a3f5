"""Tagged sentences for named-entity recognition: CoNLL column files, JSON Lines, packaged sets.

Every reader returns sentences whose tags are IOB2 (`B-TYPE` opens an entity, `I-TYPE` continues it,
`O` is outside); IOB1 and BIOES (and BILOU) tags are converted on reading. Malformed input is a
`DanluError` naming the file and line. A single file is split into train/validation/test by
sentence, seeded; a folder holds the splits as files (train / validation|valid|val|dev / test).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from danlu.data.splits import complete_splits, find_split_files
from danlu.data.textfile import open_text
from danlu.errors import DanluError, did_you_mean

SPLITS = ("train", "validation", "test")
JSONL_SUFFIXES = {".jsonl", ".json"}
COLUMN_SUFFIXES = {".txt", ".conll", ".conllu", ".tsv", ".bio", ".iob", ".iob2", ".bioes", ".tags", ""}
UNTAGGED_SUFFIXES = {".csv", ".parquet"}  # classification tables: texts and labels, no token tags
_PREFIXES = {"B", "I", "E", "S", "L", "U"}  # IOB, BIOES (E/S) and BILOU (L/U)


@dataclass
class TaggedSentence:
    """One sentence: its words and one IOB2 tag per word."""

    tokens: list[str]
    tags: list[str]


@dataclass
class TaggedData:
    """train/validation/test sentences, the tag set ("O" first, then sorted), and where they came from."""

    splits: dict[str, list[TaggedSentence]]
    labels: list[str]
    source: str
    fingerprint: str
    split_info: dict = field(default_factory=dict)


# ---- tag schemes --------------------------------------------------------------------------------


def check_tag(tag: str) -> str | None:
    """Why `tag` is not an IOB/BIOES tag, or None when it is one."""
    if tag == "O":
        return None
    prefix, dash, kind = tag.partition("-")
    if dash and prefix in _PREFIXES and kind:
        return None
    return f"tag {tag!r} is not IOB/BIOES (expected O, or B-, I-, E-, S- followed by a type)"


def to_iob2(tags: list[str]) -> list[str]:
    """IOB1, IOB2, BIOES or BILOU tags (valid ones; see `check_tag`) as IOB2.

    A tag continues the previous entity only if it is I-/E-/L- of the same type after a B- or I-
    of that type; anything else that is not O opens a new entity (B-). This is the identity on IOB2,
    turns IOB1's entity-initial I- into B-, and maps BIOES/BILOU's S-/U- to B- and E-/L- to I-.
    It also repairs an ill-formed sequence (an I- after O) the way conlleval reads it.
    """
    out: list[str] = []
    previous = "O"
    for tag in tags:
        if tag == "O":
            out.append("O")
        else:
            prefix, _, kind = tag.partition("-")
            before, _, before_kind = previous.partition("-")
            continues = prefix in ("I", "E", "L") and before in ("B", "I") and before_kind == kind
            out.append(("I-" if continues else "B-") + kind)
        previous = tag
    return out


def tag_scheme(sentences: list[list[str]]) -> str:
    """The scheme the (raw) tag sequences are written in: "bioes", "iob1" or "iob2"."""
    prefixes = {t.partition("-")[0] for tags in sentences for t in tags}
    if prefixes & {"E", "S", "L", "U"}:
        return "bioes"
    return "iob2" if all(to_iob2(tags) == tags for tags in sentences) else "iob1"


# ---- readers ------------------------------------------------------------------------------------


def _checked(path: Path, line: int, tags: list[str]) -> None:
    for tag in tags:
        if (problem := check_tag(tag)) is not None:
            raise DanluError(f"{path}:{line}: {problem}")


def read_conll(path: Path) -> tuple[list[list[str]], list[list[str]]]:
    """Words and raw tags of a CoNLL column file: token first, tag last, a blank line between
    sentences, `-DOCSTART-` lines skipped. Columns are split on tabs where the line has one (a token
    may then hold spaces), else on whitespace."""
    words: list[list[str]] = []
    tags: list[list[str]] = []
    current: tuple[list[str], list[str]] = ([], [])
    with open_text(path) as f:  # UTF-8, or Chinese GB18030/GBK detected; else a one-line error
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                if current[0]:
                    words.append(current[0])
                    tags.append(current[1])
                current = ([], [])
                continue
            columns = line.split("\t") if "\t" in line else line.split()
            if columns[0].strip() == "-DOCSTART-":
                continue
            if len(columns) < 2:
                raise DanluError(f"{path}:{number}: expected at least 2 columns (token ... tag), got "
                                 f"{len(columns)}: {line[:60]!r}")
            tag = columns[-1].strip()
            _checked(path, number, [tag])
            current[0].append(columns[0].strip())
            current[1].append(tag)
    if current[0]:
        words.append(current[0])
        tags.append(current[1])
    return words, tags


def read_jsonl(path: Path) -> tuple[list[list[str]], list[list[str]]]:
    """Words and raw tags of a JSON Lines file of `{"tokens": [...], "tags": [...]}` objects."""
    from danlu.data.tables import iter_jsonl

    words: list[list[str]] = []
    tags: list[list[str]] = []
    for number, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise DanluError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        for key in ("tokens", "tags"):
            value = row.get(key)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise DanluError(f"{path}:{number}: {key!r} must be a list of strings "
                                 "(NER data needs \"tokens\" and \"tags\")")
        if len(row["tokens"]) != len(row["tags"]):
            raise DanluError(f"{path}:{number}: {len(row['tokens'])} tokens but {len(row['tags'])} tags")
        if not row["tokens"]:
            continue
        _checked(path, number, row["tags"])
        words.append(row["tokens"])
        tags.append(row["tags"])
    return words, tags


def read_tagged(path: Path) -> tuple[list[TaggedSentence], str]:
    """The sentences of one file (CoNLL columns, or JSON Lines by suffix), tags as IOB2, and the
    scheme they were written in."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in UNTAGGED_SUFFIXES:
        raise DanluError(f"{path}: a {suffix} table has no token tags; NER data is CoNLL columns "
                         "(token ... tag, blank line between sentences) or JSON Lines {\"tokens\", \"tags\"}")
    try:
        words, tags = read_jsonl(path) if suffix in JSONL_SUFFIXES else read_conll(path)
    except UnicodeDecodeError as e:
        raise DanluError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not words:
        raise DanluError(f"{path}: empty file (no tagged sentences)")
    scheme = tag_scheme(tags)
    return [TaggedSentence(w, to_iob2(t)) for w, t in zip(words, tags)], scheme


# ---- packaged sets, folders, splits -------------------------------------------------------------


def _conll2003() -> Path:
    from danlu.assets import asset_path

    return asset_path("conll2003")


def _wnut() -> Path:
    from danlu.assets import asset_path

    return asset_path("wnut-ner")


PACKAGED = {"conll2003": _conll2003, "wnut-ner": _wnut}


def split_sentences(sentences: list[TaggedSentence], seed: int, val_ratio: float, test_ratio: float,
                    ) -> tuple[list[TaggedSentence], list[TaggedSentence], list[TaggedSentence]]:
    """A seeded sentence-level split into train/validation/test with the given shares."""
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    n_test, n_val = round(len(order) * test_ratio), round(len(order) * val_ratio)
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    return tuple([sentences[i] for i in sorted(ids)] for ids in (train, val, test))  # type: ignore[return-value]


def tag_labels(sentences: list[TaggedSentence]) -> list[str]:
    """The label list of a set of sentences: "O" first, then the other tags sorted."""
    return ["O"] + sorted({t for s in sentences for t in s.tags} - {"O"})


def load_ner(data: str, seed: int = 42, val_ratio: float = 0.1, test_ratio: float = 0.1) -> TaggedData:
    """Load DATA (a packaged name, a file, or a folder of split files) as tagged train/validation/test.

    A single file (or a folder missing a split) is split by sentence, seeded; `split_info` records
    the split so `evaluate` reproduces it. The tag set is taken over all splits, so a type that only
    shows up in the held-out part is still one the model can predict.
    """
    from danlu.artifact import fingerprint_files

    path = Path(data).expanduser()
    if data in PACKAGED and not path.exists():
        path = PACKAGED[data]()
    elif not path.exists():
        from danlu.assets import ASSETS

        if data in ASSETS and ASSETS[data].kind == "data":
            raise DanluError(f"{data!r} has no entity tags: it is not a named-entity data set "
                             f"(packaged NER sets: {', '.join(PACKAGED)})")
        raise DanluError(f"no such file or packaged data set: {data!r}{did_you_mean(data, list(PACKAGED))}")

    given: dict[str, list[TaggedSentence]] = {}
    schemes = set()
    if path.is_dir():
        readable = COLUMN_SUFFIXES | JSONL_SUFFIXES | UNTAGGED_SUFFIXES
        found = find_split_files(path, lambda p: p.suffix.lower() in readable,
                                 "train.txt/.conll/.tsv/.jsonl")
        for split, file in found.items():
            given[split], scheme = read_tagged(file)
            schemes.add(scheme)
        files = list(found.values())
    else:
        given["train"], scheme = read_tagged(path)
        schemes.add(scheme)
        files = [path]
    whole = given.pop("train")

    splits, split_info = complete_splits(whole, given, seed, val_ratio, test_ratio, split_sentences)
    split_info["tag_scheme"] = sorted(schemes)
    labels = tag_labels([s for part in splits.values() for s in part])
    return TaggedData(splits, labels, str(data), fingerprint_files(files), split_info)
