"""`load(path)`: the ONE place that decides what an artifact or model folder holds and loads it.

A folder is a plain Hugging Face model, a danlu artifact (danlu.json), LoRA adapters (merged on
load), an ONNX graph (run on onnxruntime) or a compressed variant rebuilt by `runtime.variants`.
Every stage (evaluate, predict, compress, export, serve, explain) loads through here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from danlu.artifact import Manifest, check_safe_weights
from danlu.errors import DanluError
from danlu.runtime.heads import DECODER_TASKS, HEADS, auto_class, head_suffix


@dataclass
class Loaded:
    """A model ready for inference (eval mode) with everything the task code needs."""

    path: Path
    manifest: Manifest
    task: str
    model: Any  # a torch.nn.Module, or an OnnxModel
    tokenizer: Any
    labels: list[str]
    max_length: int

    @property
    def is_onnx(self) -> bool:
        return (self.path / "model.onnx").exists()


def task_of(path: Path, manifest: Manifest | None = None) -> str:
    """The task of a folder: danlu.json's, else the default task of its head; `embed` for a bare encoder."""
    task = (manifest or Manifest.read(path)).task
    if task in DECODER_TASKS and task != "sft":
        return "causal-lm"
    if task:
        return task
    suffix = head_suffix(path)
    return HEADS[suffix][2] if suffix else "embed"


def is_decoder(path: Path) -> bool:
    """True for a causal language model (any *ForCausalLM / *LMHeadModel, plain, LoRA or a danlu variant)."""
    return task_of(path) in DECODER_TASKS


def model_device(model) -> "torch.device":  # noqa: F821
    """Where the model's inputs go (an ONNX Runtime wrapper has no parameters, only `.device`)."""
    import torch

    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def load_model(path: Path, attn: str = "sdpa", manifest: Manifest | None = None):
    """The PyTorch (or ONNX Runtime) model of `path` with its head, LoRA merged, variants rebuilt; eval mode."""
    manifest = manifest or Manifest.read(path)
    check_safe_weights(path)
    if (path / "model.onnx").exists():
        from danlu.runtime.onnx_model import OnnxModel

        return OnnxModel(path)
    if manifest.load.get("weight_only"):
        from danlu.runtime.variants import load_decoder_variant

        return load_decoder_variant(path, "cpu")
    if manifest.load:
        from danlu.runtime.variants import load_variant_model

        return load_variant_model(path, attn=attn)
    if (path / "adapter_config.json").exists():
        # The base model is built from its own folder: give it the artifact's label count, or a head over
        # other labels than the base config's (9 NER tags on MiniLM's default 2) refuses the saved head.
        labels = manifest.labels or []
        head = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                "label2id": {label: i for i, label in enumerate(labels)}, "ignore_mismatched_sizes": True}
        return auto_class(path, peft=True).from_pretrained(str(path), **(head if labels else {})
                                                           ).merge_and_unload().eval()
    return auto_class(path).from_pretrained(str(path), attn_implementation=attn).eval()


def load(name_or_path: str | Path, device: str | None = None, task: str | None = None,
         attn: str = "sdpa") -> Loaded:
    """Load an artifact (or packaged model name) for inference on `device` (default: CUDA if present).

    With `task` given, a folder of another task is refused with a clear error."""
    import torch
    from transformers import AutoTokenizer

    from danlu.assets import resolve_model

    path = resolve_model(str(name_or_path))
    manifest = Manifest.read(path)
    found = task_of(path, manifest)
    if task is not None and found != task:
        raise DanluError(f"{path} is a {found!r} model, not {task!r}")
    model = load_model(path, attn, manifest)
    if manifest.load.get("cpu_only") or (path / "model.onnx").exists():
        device = "cpu"
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    config = model.config
    labels = manifest.labels or ([config.id2label[i] for i in range(config.num_labels)]
                                 if getattr(config, "id2label", None) and found in ("classify", "ner") else [])
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    max_length = int(manifest.args.get("max_length") or 128)
    return Loaded(path, manifest, found, model, tokenizer, labels, max_length)
