"""The one place where explain and attack open an artifact (switches to `danlu.runtime.load` when it lands)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from danlu.artifact import read_manifest, resolve_model
from danlu.errors import DanluError


@dataclass
class Loaded:
    """What an artifact holds, as `danlu.runtime.load` returns it (same field names)."""

    path: Path
    manifest: dict
    task: str
    model: object
    tokenizer: object
    labels: list[str]
    max_length: int
    notes: list[str] = field(default_factory=list)


def load(path: str | Path, device: str | None = None) -> Loaded:
    """Open an artifact for inference: model (PyTorch or ONNX Runtime), tokenizer, labels, max length."""
    from danlu.evaluate.classify import load_classifier

    c = load_classifier(str(path), device)  # until danlu.runtime.load lands: classifiers only
    return Loaded(c.path, read_manifest(c.path), "classify", c.model, c.tokenizer, c.labels, c.max_length)


def is_pytorch(folder: Path, manifest: dict) -> bool:
    """Whether the folder holds a plain (differentiable) PyTorch model rather than an ONNX graph or a
    compressed variant that needs a loading step (int8 modules have no gradients)."""
    return not (folder / "model.onnx").exists() and not manifest.get("load")


def load_differentiable(path: str | Path, device: str | None = None) -> Loaded:
    """An artifact whose PyTorch model gradients can flow through: the artifact itself, or, for an ONNX
    or compressed variant, the parent it was made from (noted in `Loaded.notes`)."""
    folder = resolve_model(str(path))
    manifest = read_manifest(folder)
    notes = []
    if not is_pytorch(folder, manifest):
        parent = manifest.get("parent")
        parent_path = Path(parent) if parent else None
        if parent_path is None or not parent_path.is_dir() or not is_pytorch(parent_path, read_manifest(parent_path)):
            raise DanluError(f"{folder} has no PyTorch model to take gradients through and its parent "
                             f"({parent or 'none recorded'}) is not a PyTorch artifact on this machine")
        notes.append(f"{folder} is a {'ONNX' if (folder / 'model.onnx').exists() else 'compressed'} variant: "
                     f"explained through its parent PyTorch model {parent_path}")
        folder = parent_path
    loaded = load(folder, device)
    loaded.notes = notes
    return loaded


def split_examples(loaded: Loaded, data: str, split: str, n: int) -> tuple[list[str], list[str]]:
    """The first `n` texts and labels of a split of DATA, split as at fine-tuning (the artifact's seed and
    ratios); `n` larger than the split is refused."""
    from danlu.data.classification import SPLITS, load_classification

    if split not in SPLITS:
        raise DanluError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    saved = loaded.manifest.get("args", {})
    labelled = load_classification(data, saved.get("text_column", "text"), saved.get("label_column", "label"),
                                   saved.get("seed", 42), saved.get("val_ratio", 0.1), saved.get("test_ratio", 0.1))
    examples = labelled.splits[split]
    if n < 1 or n > len(examples):
        raise DanluError(f"--n {n} is larger than the {split} split of {data} ({len(examples)} examples)"
                         if n > len(examples) else f"--n must be >= 1, got {n}")
    unknown = sorted(set(examples.labels[:n]) - set(loaded.labels))
    if unknown:
        raise DanluError(f"{data} has labels the model does not know: {', '.join(unknown)}")
    return examples.texts[:n], examples.labels[:n]
