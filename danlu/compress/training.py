"""Short trainings inside compression (recovery after pruning, distillation) on danlu's shared loop."""

from __future__ import annotations

import random
import shutil

import torch

from danlu.compress.job import CompressJob
from danlu.config import TrainArgs
from danlu.evaluate.classify import encode


def train_features(job: CompressJob, tokenizer) -> tuple[list[dict], list[int]]:
    """Token features and label ids of the training split."""
    train = job.data.splits["train"]
    return encode(tokenizer, train.texts, job.max_length), [job.labels.index(y) for y in train.labels]


def calibration_features(job: CompressJob, tokenizer) -> tuple[list[dict], list[int]]:
    """A seeded sample of `job.calibration_samples` training examples (importance scores, calibration)."""
    train = job.data.splits["train"]
    order = list(range(len(train)))
    random.Random(job.seed).shuffle(order)
    order = order[: job.calibration_samples]
    features = encode(tokenizer, [train.texts[i] for i in order], job.max_length)
    return features, [job.labels.index(train.labels[i]) for i in order]


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

