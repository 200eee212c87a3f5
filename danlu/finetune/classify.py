"""`danlu finetune --task classify`: sequence classification, full or LoRA."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from danlu.artifact import atomic_dir, read_manifest, resolve_model, write_manifest
from danlu.config import to_dict
from danlu.data.classification import load_classification
from danlu.errors import DanluError
from danlu.evaluate.classify import encode, pad, score
from danlu.finetune.args import FinetuneArgs
from danlu.train.loop import EvalResult, train


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


def build_model(model_path: Path, labels: list[str], args: FinetuneArgs) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    if (model_path / "adapter_config.json").exists():
        raise DanluError(f"{model_path} is a LoRA artifact; merge it first with `danlu merge`")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized classifier" notice is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(model_path), num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)}, ignore_mismatched_sizes=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    if args.lora:
        from peft import LoraConfig, TaskType, get_peft_model

        config = LoraConfig(task_type=TaskType.SEQ_CLS, r=args.lora_r, lora_alpha=args.lora_alpha,
                            lora_dropout=args.lora_dropout)
        model = get_peft_model(model, config)
    return model


def save_weights(model: torch.nn.Module, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_model

    save_model(model, str(folder / "model.safetensors"))


def finetune_classifier(args: FinetuneArgs) -> Path:
    """Fine-tune, keep the best validation checkpoint, test it, and write the artifact to args.out."""
    from transformers import AutoTokenizer, set_seed

    out = Path(args.out)
    run_dir = out.with_name(out.name + ".run")
    model_path = resolve_model(args.model)
    data = load_classification(args.data, args.text_column, args.label_column, args.train.seed,
                               args.val_ratio, args.test_ratio)
    labels = data.labels
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train_split, val_split = data.splits["train"], data.splits["validation"]
    features = encode(tokenizer, train_split.texts, args.max_length)
    label_ids = [labels.index(y) for y in train_split.labels]
    set_seed(args.train.seed)
    model = build_model(model_path, labels, args)
    if args.lora:
        model.print_trainable_parameters()

    def evaluate(m: torch.nn.Module) -> EvalResult:
        metrics = score(m, tokenizer, val_split.texts, val_split.labels, labels, args.max_length,
                        progress="validating")
        return EvalResult({"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                           "loss": metrics["loss"]}, metrics["accuracy"])

    stage_args = to_dict(args)
    resume_key = {k: v for k, v in stage_args.items()
                  if k not in {"resume", "out", "log_every", "keep_checkpoints", "save_every", "eval_every"}}
    resume_key["data_fingerprint"] = data.fingerprint
    from danlu.robust.augment import augment_objective

    objective = augment_objective(args.augment, ClassificationObjective(features, label_ids, pad_id),
                                  train_split.texts, label_ids, tokenizer, args.max_length, args.train.seed)
    result = train(model, objective,
                   [len(f["input_ids"]) for f in features], args.train, run_dir,
                   evaluate=evaluate if len(val_split) else None, resume=args.resume,
                   resume_key=resume_key, on_best=save_weights)
    best = run_dir / "best" / "model.safetensors"
    if best.exists():
        from safetensors.torch import load_model

        load_model(model, str(best))
    model.eval()
    test = data.splits["test"]
    test_metrics = (score(model, tokenizer, test.texts, test.labels, labels, args.max_length, progress="testing")
                    if len(test) else {})
    metrics = {
        "test": test_metrics,
        "best_validation": result.best_metrics,
        "best_step": result.best_step,
        "steps": result.steps,
        "train_examples_per_second": round(result.examples_per_second, 2),
        "precision": result.precision,
    }
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        shutil.copy(run_dir / "metrics.jsonl", tmp / "metrics.jsonl")
        manifest = write_manifest(
            tmp, task="classify", stage="finetune", args=stage_args, parent=str(model_path),
            labels=labels, data_fingerprint=data.fingerprint, metrics=metrics,
            data={"source": data.source, "split": data.split_info}, lora=args.lora,
            base_model=read_manifest(model_path).get("base_model", str(model_path)))
        from danlu.report.training import write_training_report

        write_training_report(tmp, manifest, result.history)
    shutil.rmtree(run_dir, ignore_errors=True)
    return out


def merge_lora(artifact: str, out: str) -> Path:
    """Fold a LoRA artifact's adapters into the base weights: a plain, faster artifact."""
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoTokenizer

    path = resolve_model(artifact)
    if not (path / "adapter_config.json").exists():
        raise DanluError(f"{path} is not a LoRA artifact (no adapter_config.json)")
    manifest = read_manifest(path)
    model = AutoPeftModelForSequenceClassification.from_pretrained(str(path)).merge_and_unload()
    with atomic_dir(Path(out)) as tmp:
        model.save_pretrained(str(tmp))
        AutoTokenizer.from_pretrained(str(path)).save_pretrained(str(tmp))
        if (path / "metrics.jsonl").exists():
            shutil.copy(path / "metrics.jsonl", tmp / "metrics.jsonl")
        write_manifest(tmp, task=manifest.get("task", "classify"), stage="merge",
                       args={**manifest.get("args", {}), "lora": False}, parent=str(path),
                       labels=manifest.get("labels"), data_fingerprint=manifest.get("data_fingerprint"),
                       metrics=manifest.get("metrics"), data=manifest.get("data"), lora=False)
    return Path(out)
