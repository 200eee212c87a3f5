"""Short trainings inside compression (recovery after pruning, distillation) on danlu's shared loop."""

from __future__ import annotations

import random
import shutil

import torch

from danlu.compress.job import CompressJob
from danlu.config import TrainArgs


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def task_objective(job: CompressJob, tokenizer, limit: int = 0):
    """The parent task's training objective over the train split (a seeded sample of `limit` examples
    when set) and its items' lengths."""
    from danlu.tasks import get_task

    examples = list(job.data.splits["train"])
    if limit:
        random.Random(job.seed).shuffle(examples)
        examples = examples[:limit]
    return get_task(job.task).make_objective(tokenizer, examples, job.labels, job.max_length, **job.task_options)


def calibration_batches(job: CompressJob, tokenizer, batch_size: int = 16, with_targets: bool = False
                        ) -> list[dict[str, torch.Tensor]]:
    """`job.calibration_samples` training examples (seeded sample) as model-input batches (with the task's
    targets too when `with_targets`), for calibration and importance scores."""
    objective, lengths = task_objective(job, tokenizer, job.calibration_samples)
    batches = [objective.collate(list(range(i, min(i + batch_size, len(lengths)))))
               for i in range(0, len(lengths), batch_size)]
    return batches if with_targets else [{k: v for k, v in b.items() if k in MODEL_INPUTS} for b in batches]


def classification_features(job: CompressJob, tokenizer) -> tuple[list[dict], list[int]]:
    """Token features and label ids of the training split of a classifier (distillation)."""
    from danlu.tasks.classify import encode

    train = job.data.splits["train"]
    return encode(tokenizer, [t for t, _ in train], job.max_length), [job.labels.index(y) for _, y in train]


def run_training(model: torch.nn.Module, objective, lengths: list[int], job: CompressJob, name: str,
                 epochs: float | None = None) -> dict:
    """Train `model` in place with the job's options; return a summary (steps, seconds)."""
    from transformers import set_seed

    from danlu.train.loop import train

    options = job.options
    args = TrainArgs(epochs=epochs or options.get("train_epochs", 2.0), max_steps=options.get("train_max_steps", 0),
                     lr=options.get("train_lr", 1e-4), batch_size=32,
                     bf16=bool(options.get("train_bf16", False)), seed=job.seed,
                     save_every=10**9, log_every=50)  # one checkpoint, at the end: these runs are short
    run_dir = job.out.with_name(f".{job.out.name}.{name}-run")
    set_seed(job.seed)
    model.train()
    try:
        result = train(model, objective, lengths, args, run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    model.eval()
    return {"steps": result.steps, "train_seconds": round(result.train_seconds, 1), "epochs": args.epochs,
            "max_steps": args.max_steps, "lr": args.lr,
            "precision": result.precision}  # what the loop really used: it falls back to fp32 where bf16 is emulated

