"""Text classification (and sentiment): one label per text, `AutoModelForSequenceClassification`.

Data: packaged sets (rotten-tomatoes, ...), CSV/TSV/JSONL/Parquet files or a folder of split files
(danlu/data/classification.py). Metric: accuracy (primary), macro-F1, per-class scores, confusion matrix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from danlu.errors import DanluError
from danlu.tasks.base import DataSpec, TaskData

NAME = "classify"
PRIMARY_METRIC = "accuracy"
HEAD = "AutoModelForSequenceClassification"
PEFT_TASK_TYPE = "SEQ_CLS"
ROUTE = "/v1/classify"
KIND = "classifier"  # what /v1/models and error messages call a model of this task
ONNX_OUTPUTS = ("logits",)
TRAIN_METRICS = ("accuracy", "macro_f1", "loss")  # what the training curve records per evaluation


# ---- data --------------------------------------------------------------------------------------------


def load_data(spec: DataSpec) -> TaskData:
    from danlu.data.classification import load_classification

    data = load_classification(spec.data, spec.text_column, spec.label_column, spec.seed, spec.val_ratio,
                               spec.test_ratio)
    splits = {name: list(zip(examples.texts, examples.labels)) for name, examples in data.splits.items()}
    return TaskData(splits, data.labels, data.source, data.fingerprint, data.split_info)


def input_of(example: tuple[str, str]) -> str:
    return example[0]


def decision(result: dict[str, Any]) -> str:
    """What two predictions must share to agree (ONNX parity): the label."""
    return result["label"]


# ---- model and objective -----------------------------------------------------------------------------


def build_model(model_path: Path, labels: list[str]) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(
        str(model_path), num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)}, ignore_mismatched_sizes=True)


def encode(tokenizer, texts: Sequence[str], max_length: int) -> list[dict[str, list[int]]]:
    """Token ids (and type ids where the model has them) per text, unpadded."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
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


def pad_id_of(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


class ClassificationObjective:
    """Cross-entropy over labels; one loss term per example."""

    def __init__(self, features: list[dict], label_ids: list[int], pad_id: int):
        self.features, self.label_ids, self.pad_id = features, label_ids, pad_id

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        batch = pad([self.features[i] for i in indices], self.pad_id)
        batch["labels"] = torch.tensor([self.label_ids[i] for i in indices])
        return batch

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return len(batch["labels"])

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels = batch["labels"]
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        return torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum")


def make_objective(tokenizer, examples: Sequence[tuple[str, str]], labels: list[str], max_length: int
                   ) -> tuple[ClassificationObjective, list[int]]:
    features = encode(tokenizer, [text for text, _ in examples], max_length)
    label_ids = [labels.index(label) for _, label in examples]
    return ClassificationObjective(features, label_ids, pad_id_of(tokenizer)), [len(f["input_ids"]) for f in features]


# ---- inference and scoring ---------------------------------------------------------------------------


@torch.inference_mode()
def predict_proba(model, tokenizer, features: list[dict], batch_size: int = 64, progress: str = "") -> torch.Tensor:
    """Class probabilities, (n, num_labels), in the order of `features` (batched by length).

    With `progress` set, a progress bar with that title counts the examples."""
    from tqdm.auto import tqdm

    from danlu.runtime import model_device

    device = model_device(model)
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    probs = torch.empty((len(features), model.config.num_labels))
    bar = tqdm(total=len(order), desc=progress, unit="ex", disable=not progress, leave=False, dynamic_ncols=True)
    for start in range(0, len(order), batch_size):
        ids = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in pad([features[i] for i in ids], pad_id_of(tokenizer)).items()}
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


def score_texts(model, tokenizer, texts: Sequence[str], true: Sequence[str], labels: list[str], max_length: int,
                batch_size: int = 64, progress: str = "") -> dict:
    """All metrics of the model's predictions for `texts` against the `true` labels (and the loss)."""
    unknown = sorted(set(true) - set(labels))
    if unknown:
        raise DanluError(f"the data has labels the model does not know: {', '.join(unknown)} "
                         f"(model labels: {', '.join(labels)})")
    probs = predict_proba(model, tokenizer, encode(tokenizer, texts, max_length), batch_size, progress)
    predicted = [labels[i] for i in probs.argmax(-1).tolist()]
    metrics = classification_metrics(list(true), predicted, labels)
    gold = torch.tensor([labels.index(t) for t in true])
    metrics["loss"] = float(torch.nn.functional.nll_loss(torch.log(probs.clamp_min(1e-12)), gold))
    return metrics


def score(model, tokenizer, examples: Sequence[tuple[str, str]], labels: list[str], max_length: int,
          progress: str = "") -> dict:
    return score_texts(model, tokenizer, [t for t, _ in examples], [y for _, y in examples], labels, max_length,
                       progress=progress)


def predict(model, tokenizer, inputs: Sequence[str], labels: list[str], max_length: int,
            batch_size: int = 64, progress: str = "") -> list[dict[str, Any]]:
    """The label and the probability of every class, per text."""
    probs = predict_proba(model, tokenizer, encode(tokenizer, inputs, max_length), batch_size, progress)
    return [{"label": labels[int(p.argmax())], "probabilities": {l: float(x) for l, x in zip(labels, p.tolist())}}
            for p in probs]


# ---- the command line and the server -----------------------------------------------------------------


def read_inputs(texts: list[str], input_file: str, **_: str) -> list[str]:
    """Texts from the command line and from --input FILE (one per line in .txt, else a `text` column)."""
    from danlu.data.tables import read_table

    texts = list(texts)
    if input_file:
        path = Path(input_file)
        if path.suffix == ".txt":
            if not path.exists():
                raise DanluError(f"no such file: {path}")
            texts += [t for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
        else:
            rows, _ = read_table(path)
            if rows and "text" not in rows[0]:
                raise DanluError(f"{path}: no column 'text'; columns: {', '.join(rows[0])}")
            texts += [str(r["text"]) for r in rows]
    if not texts or any(not t.strip() for t in texts):
        raise DanluError("give one or more non-empty texts, or --input FILE")
    return texts


def format_prediction(text: str, result: dict[str, Any]) -> str:
    probs = "  ".join(f"{label}={p:.3f}" for label, p in result["probabilities"].items())
    return f"{result['label']:<12} {probs}  {text[:70]}"


def format_metrics(metrics: dict[str, Any]) -> str:
    labels = metrics["confusion_matrix"]["labels"]
    lines = [f"{metrics['split']}: {metrics['examples']} examples  accuracy {metrics['accuracy']:.4f}  "
             f"macro-F1 {metrics['macro_f1']:.4f}  loss {metrics['loss']:.4f}",
             f"{'label':<14}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}"]
    lines += [f"{label:<14}{m['precision']:>10.3f}{m['recall']:>10.3f}{m['f1']:>10.3f}{m['support']:>9}"
              for label, m in metrics["per_class"].items()]
    lines.append(f"confusion matrix (rows: true, columns: predicted): {labels}")
    lines += [f"  {label:<12} {row}" for label, row in zip(labels, metrics["confusion_matrix"]["matrix"])]
    return "\n".join(lines)


def validate_request(inputs: Any) -> list[str]:
    texts = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("input must be a non-empty string or list of strings")
    return texts
