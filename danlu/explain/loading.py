"""Where explain and attack open an artifact and read a data split (through the task layer)."""

from __future__ import annotations

from pathlib import Path

from danlu.artifact import Manifest
from danlu.errors import DanluError
from danlu.runtime import Loaded


def load(path: str | Path, device: str | None = None, task: str | None = "classify") -> Loaded:
    """Open an artifact for inference (PyTorch or ONNX Runtime): danlu.runtime.load; a classifier unless
    `task` says otherwise (None: whatever task the artifact is)."""
    from danlu.runtime import load as runtime_load

    return runtime_load(path, device, task=task)


def is_pytorch(folder: Path, manifest: Manifest) -> bool:
    """Whether the folder holds a plain (differentiable) PyTorch model rather than an ONNX graph or a
    compressed variant that needs a loading step (int8 modules have no gradients)."""
    return not (folder / "model.onnx").exists() and not manifest.load


def load_differentiable(path: str | Path, device: str | None = None) -> tuple[Loaded, list[str]]:
    """An artifact whose PyTorch model gradients can flow through: the artifact itself, or, for an ONNX
    or compressed variant, the parent it was made from; with notes saying which."""
    from danlu.assets import resolve_model

    folder = resolve_model(str(path))
    manifest = Manifest.read(folder)
    notes = []
    if not is_pytorch(folder, manifest):
        parent = Path(manifest.parent) if manifest.parent else None
        if parent is None or not parent.is_dir() or not is_pytorch(parent, Manifest.read(parent)):
            raise DanluError(f"{folder} has no PyTorch model to take gradients through and its parent "
                             f"({manifest.parent or 'none recorded'}) is not a PyTorch artifact on this machine")
        notes.append(f"{folder} is a {'ONNX' if (folder / 'model.onnx').exists() else 'compressed'} variant: "
                     f"explained through its parent PyTorch model {parent}")
        folder = parent
    return load(folder, device, task=None), notes


def split_examples(loaded: Loaded, data: str, split: str, n: int) -> tuple[list[str], list[str]]:
    """The first `n` texts and labels of a split of DATA, split as at fine-tuning (the artifact's seed and
    ratios); `n` larger than the split is refused."""
    from danlu.tasks import get_task
    from danlu.tasks.base import DataSpec

    splits = ("train", "validation", "test")
    if split not in splits:
        raise DanluError(f"--split must be one of {', '.join(splits)}, got {split!r}")
    examples = get_task(loaded.task).load_data(DataSpec.from_args(data, loaded.manifest.args)).splits[split]
    if n < 1 or n > len(examples):
        raise DanluError(f"--n {n} is larger than the {split} split of {data} ({len(examples)} examples)"
                         if n > len(examples) else f"--n must be >= 1, got {n}")
    texts, labels = [t for t, _ in examples[:n]], [y for _, y in examples[:n]]
    unknown = sorted(set(labels) - set(loaded.labels))
    if unknown:
        raise DanluError(f"{data} has labels the model does not know: {', '.join(unknown)}")
    return texts, labels
