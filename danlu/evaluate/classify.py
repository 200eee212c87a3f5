"""Classification: load an artifact, predict probabilities in length-sorted batches, score them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from danlu.artifact import check_safe_weights, read_manifest, resolve_model
from danlu.errors import DanluError


@dataclass
class Classifier:
    model: torch.nn.Module
    tokenizer: object
    labels: list[str]
    max_length: int
    path: Path


def load_classifier(artifact: str, device: str | None = None) -> Classifier:
    """A classification artifact (plain or LoRA) ready for inference, merged and in eval mode."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model(artifact)
    manifest = read_manifest(path)
    check_safe_weights(path)
    if (path / "model.onnx").exists():  # an ONNX artifact (danlu export / compress): runs on onnxruntime
        from danlu.export.onnx import OnnxClassifier

        model, device = OnnxClassifier(path), "cpu"
    elif manifest.get("load"):  # a compressed variant that needs a step on load (danlu/compress/variant.py)
        from danlu.compress.variant import load_variant_model

        model = load_variant_model(path)
        if manifest["load"].get("cpu_only"):
            device = "cpu"
    elif (path / "adapter_config.json").exists():
        from peft import AutoPeftModelForSequenceClassification

        model = AutoPeftModelForSequenceClassification.from_pretrained(str(path)).merge_and_unload()
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(path))
    labels = manifest.get("labels") or [model.config.id2label[i] for i in range(model.config.num_labels)]
    if manifest and manifest.get("task") not in (None, "classify"):
        raise DanluError(f"{path} is a {manifest['task']!r} artifact, not a classifier")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    max_length = int(manifest.get("args", {}).get("max_length", 128))
    return Classifier(model, tokenizer, labels, max_length, path)


def model_device(model) -> torch.device:
    """Where the model's inputs go (an ONNX Runtime wrapper has no parameters, only `.device`)."""
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


def encode(tokenizer, texts: list[str], max_length: int) -> list[dict[str, list[int]]]:
    """Token ids (and type ids where the model has them) per text, unpadded."""
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "token_type_ids") if k in enc]
    return [{k: enc[k][i] for k in keys} for i in range(len(texts))]


def pad(features: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest in the batch: input_ids, attention_mask (and token_type_ids)."""
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in features[0]:
        batch["token_type_ids"] = torch.zeros((len(features), width), dtype=torch.long)
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        ids[row, :n] = torch.tensor(f["input_ids"])
        mask[row, :n] = 1
        if "token_type_ids" in batch:
            batch["token_type_ids"][row, :n] = torch.tensor(f["token_type_ids"])
    return batch


@torch.inference_mode()
def predict_proba(model: torch.nn.Module, tokenizer, features: list[dict], batch_size: int = 64,
                  progress: str = "") -> torch.Tensor:
    """Class probabilities, (n, num_labels), in the order of `features` (batched by length).

    With `progress` set, a progress bar with that title counts the examples."""
    from tqdm.auto import tqdm

    device = model_device(model)
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    probs = torch.empty((len(features), model.config.num_labels))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    bar = tqdm(total=len(order), desc=progress, unit="ex", disable=not progress, leave=False, dynamic_ncols=True)
    for start in range(0, len(order), batch_size):
        ids = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in pad([features[i] for i in ids], pad_id).items()}
        logits = model(**batch).logits.float()
        probs[ids] = torch.softmax(logits, dim=-1).cpu()
        bar.update(len(ids))
    bar.close()
    return probs


def classification_metrics(true: list[str], predicted: list[str], labels: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    if not true:
        raise DanluError("no examples to evaluate")
    precision, recall, f1, support = precision_recall_fscore_support(
        true, predicted, labels=labels, zero_division=0)
    return {
        "accuracy": float(accuracy_score(true, predicted)),
        "macro_f1": float(f1_score(true, predicted, labels=labels, average="macro", zero_division=0)),
        "per_class": {label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for label, p, r, f, s in zip(labels, precision, recall, f1, support)},
        "confusion_matrix": {"labels": labels,
                             "matrix": confusion_matrix(true, predicted, labels=labels).tolist()},
        "examples": len(true),
    }


def score(model, tokenizer, texts: list[str], true: list[str], labels: list[str], max_length: int,
          batch_size: int = 64, progress: str = "") -> dict:
    probs = predict_proba(model, tokenizer, encode(tokenizer, texts, max_length), batch_size, progress)
    predicted = [labels[i] for i in probs.argmax(-1).tolist()]
    metrics = classification_metrics(true, predicted, labels)
    gold = torch.tensor([labels.index(t) for t in true])
    metrics["loss"] = float(torch.nn.functional.nll_loss(torch.log(probs.clamp_min(1e-12)), gold))
    return metrics
