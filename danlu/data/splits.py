"""train/validation/test from a data set's files: the splits a user gave, the others held out of train."""

from __future__ import annotations

from typing import Any, Callable, Sequence

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
