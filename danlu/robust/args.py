"""Arguments of `danlu attack` (light: no torch import, so --help is instant)."""

from __future__ import annotations

from dataclasses import dataclass

from danlu.config import arg, check


@dataclass
class AttackArgs:
    """Attack a classifier on a data split (black-box, batched) and report how robust it is."""

    artifact: str = arg(help="a trained classification artifact (PyTorch or ONNX)", positional=True)
    data: str = arg(help="packaged data name or file/folder (split as at fine-tuning, same seed)")
    recipe: str = arg("textfooler", "textfooler, pwws, deepwordbug or typo")
    split: str = arg("test", "which split to attack: train, validation or test")
    n: int = arg(200, "how many examples of the split to attack (the first N)")
    out: str = arg("attack", "folder for attack.json and attack.html")
    max_words_changed: float = arg(0.2, "at most this fraction of the words may be changed")
    min_cosine: float = arg(0.5, "synonym swaps need counter-fitted embedding cosine >= this (TextFooler)")
    candidates: int = arg(50, "replacement candidates tried per word")
    batch_size: int = arg(64, "texts per model query batch")
    seed: int = arg(0, "seed of the random choices (deepwordbug, typo)")
    device: str = arg("", "cpu, cuda or cuda:N (default: cuda if present)")

    def __post_init__(self) -> None:
        check(self.n >= 1, "--n", f"must be >= 1, got {self.n}")
        check(0 < self.max_words_changed <= 1, "--max-words-changed", f"must be in (0, 1], got {self.max_words_changed}")
        check(-1 <= self.min_cosine <= 1, "--min-cosine", f"must be in [-1, 1], got {self.min_cosine}")
        check(self.candidates >= 1, "--candidates", f"must be >= 1, got {self.candidates}")
        check(self.batch_size >= 1, "--batch-size", f"must be >= 1, got {self.batch_size}")
