"""train/validation/test from a data set's files: the splits a user gave, the others held out of train."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from danlu.errors import DanluError

Split = Callable[[Any, int, float, float], tuple[Any, Any, Any]]


def complete_splits(whole: Sequence, given: dict[str, Sequence], seed: int, val_ratio: float, test_ratio: float,
                    split: Split) -> tuple[dict[str, Sequence], dict[str, Any]]:
    """The three splits and the record of how they were made (`split_info` in danlu.json).

    `whole` is the train file's examples, `given` the validation/test files found beside it; a split not
    given is held out of `whole` by `split(whole, seed, val_share, test_share)` -> (train, val, test),
    seeded, so `evaluate` reproduces it."""
    info: dict[str, Any] = {"seed": seed, "given": sorted(given) + ["train"]}
    if "validation" in given and "test" in given:
        splits = {"train": whole, **given}
    else:
        val_share = 0.0 if "validation" in given else val_ratio
        test_share = 0.0 if "test" in given else test_ratio
        train, val, test = split(whole, seed, val_share, test_share)
        splits = {"train": train, "validation": given.get("validation", val), "test": given.get("test", test)}
        info.update({"val_ratio": val_share, "test_ratio": test_share})
    info["sizes"] = {s: len(e) for s, e in splits.items()}
    return splits, info


SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}


def find_split_files(folder: Path, accepts: Callable[[Path], bool], expected: str,
                     versioned: bool = False) -> dict[str, Path]:
    """The train/validation/test files of a data folder: a file whose name before the first dot is a
    split's alias (train; validation, valid, val, dev; test) and that `accepts` takes; with `versioned`,
    also `ALIAS-anything` in any case (SQuAD's `train-v1.1.json`). Aliases are tried in that order, files in
    name order. A folder without a train file is a DanluError naming `expected`."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and accepts(p))
    found: dict[str, Path] = {}
    for split, aliases in SPLIT_ALIASES.items():
        for alias in aliases:
            matches = [p for p in files if _names(p, alias, versioned)]
            if matches:
                found[split] = matches[0]
                break
    if "train" not in found:
        raise DanluError(f"{folder}: expected a train file ({expected}) in the folder")
    return found


def _names(path: Path, alias: str, versioned: bool) -> bool:
    stem = path.name.split(".")[0]
    if versioned:
        stem = stem.lower()
        return stem == alias or stem.startswith(alias + "-")
    return stem == alias
