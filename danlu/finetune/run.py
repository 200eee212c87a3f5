"""`danlu finetune --task NAME`: any task of the task layer, full or LoRA, on the one training loop.

The task module (danlu/tasks/NAME.py) reads the data, builds the model with its head, makes the
objective, and scores; this module holds no per-task branch.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch

from danlu.artifact import Manifest, atomic_dir, check_out, remove_own_dir, write_manifest
from danlu.assets import resolve_model
from danlu.config import to_dict
from danlu.errors import DanluError
from danlu.finetune.args import FinetuneArgs
from danlu.tasks import get_task, task_options
from danlu.tasks.base import DataSpec
from danlu.train import checkpoint as ckpt
from danlu.train.loop import EvalResult, train

# Arguments that do not change what is trained (a resumed run may differ in them).
_NOT_RESUME_KEY = {"resume", "out", "log_every", "keep_checkpoints", "save_every", "eval_every", "overwrite",
                   "threads", "report_to", "mlflow_uri"}


def data_spec(args: FinetuneArgs) -> DataSpec:
    return DataSpec(args.data, args.train.seed, args.val_ratio, args.test_ratio, args.text_column,
                    args.label_column, args.max_train_examples)


def build_model(task, model_path: Path, labels: list[str], args: FinetuneArgs) -> torch.nn.Module:
    """The task's model with a fresh head; LoRA adapters around it with `--lora`."""
    from transformers.utils import logging as hf_logging

    if (model_path / "adapter_config.json").exists():
        raise DanluError(f"{model_path} is a LoRA artifact; merge it first with `danlu merge`")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized head" notice is expected here
    try:
        model = task.build_model(model_path, labels)
    finally:
        hf_logging.set_verbosity(verbosity)
    if args.lora:
        from peft import LoraConfig, TaskType, get_peft_model

        config = LoraConfig(task_type=getattr(TaskType, task.PEFT_TASK_TYPE), r=args.lora_r,
                            lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout)
        model = get_peft_model(model, config)
    return model


def finetune(args: FinetuneArgs) -> Path:
    """Fine-tune for `args.task`, keep the best validation checkpoint, test it, write the artifact to args.out."""
    from transformers import AutoTokenizer, set_seed

    task = get_task(args.task)
    if not args.max_length:  # the task's own window (recorded resolved, so later stages read the real one)
        args = dataclasses.replace(args, max_length=getattr(task, "MAX_LENGTH", 128))
    out = Path(args.out)
    run_dir = out.with_name(out.name + ".run")
    check_out(out, args.overwrite)  # before the training, not after it
    model_path = resolve_model(args.model)
    data = task.load_data(data_spec(args))
    labels = data.labels
    stage_args = to_dict(args)
    options = task_options(task, stage_args)
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    train_examples, val_examples = data.splits["train"], data.splits["validation"]
    objective, lengths = task.make_objective(tokenizer, train_examples, labels, args.max_length, **options)
    if args.augment != "none":  # on-the-fly augmented or adversarial examples (danlu/tasks/augment.py)
        from danlu.tasks.augment import augment_objective

        objective = augment_objective(args.augment, task.NAME, objective, train_examples, labels, tokenizer,
                                      args.max_length, args.train.seed)
    set_seed(args.train.seed)
    model = build_model(task, model_path, labels, args)
    if args.lora:
        model.print_trainable_parameters()
    curve_metrics = getattr(task, "TRAIN_METRICS", (task.PRIMARY_METRIC, "loss"))

    def evaluate(m: torch.nn.Module) -> EvalResult:
        metrics = task.score(m, tokenizer, val_examples, labels, args.max_length, progress="validating", **options)
        return EvalResult({k: metrics[k] for k in curve_metrics if k in metrics}, metrics[task.PRIMARY_METRIC],
                          details=metrics)

    resume_key = {k: v for k, v in stage_args.items() if k not in _NOT_RESUME_KEY}
    resume_key["data_fingerprint"] = data.fingerprint
    result = train(model, objective, lengths, args.train, run_dir, evaluate=evaluate if len(val_examples) else None,
                   resume=args.resume, resume_key=resume_key, on_best=ckpt.save_weights)
    ckpt.load_weights(model, run_dir / "best")  # none kept (no evaluation): the last weights stay
    model.eval()
    test = data.splits["test"]
    if test is val_examples and result.best_details:  # e.g. SQuAD: the test split is the dev set, scored at best
        test_metrics = dict(result.best_details)
    else:
        test_metrics = (task.score(model, tokenizer, test, labels, args.max_length, progress="testing", **options)
                        if len(test) else {})
    metrics = {
        "test": test_metrics,
        "best_validation": result.best_metrics,
        "best_step": result.best_step,
        "steps": result.steps,
        "train_examples_per_second": round(result.examples_per_second, 2),
        "precision": result.precision,
    }
    with atomic_dir(out, args.overwrite) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        shutil.copy(run_dir / "metrics.jsonl", tmp / "metrics.jsonl")
        manifest = write_manifest(
            tmp, task=task.NAME, stage="finetune", args=stage_args, parent=str(model_path),
            labels=labels, data_fingerprint=data.fingerprint, metrics=metrics, primary_metric=task.PRIMARY_METRIC,
            data={"source": data.source, "split": data.split_info}, lora=args.lora,
            base_model=Manifest.read(model_path).base_model or str(model_path))
        from danlu.report.training import write_training_report
        from danlu.train.tracking import finish_tracking

        write_training_report(tmp, manifest, result.history)
        finish_tracking(run_dir, tmp, manifest)
    remove_own_dir(run_dir)
    return out


def merge_lora(artifact: str, out: str, overwrite: bool = False) -> Path:
    """Fold a LoRA artifact's adapters into the base weights: a plain, faster artifact (any task)."""
    from transformers import AutoTokenizer

    from danlu.runtime import load_model

    path = resolve_model(artifact)
    if not (path / "adapter_config.json").exists():
        raise DanluError(f"{path} is not a LoRA artifact (no adapter_config.json)")
    manifest = Manifest.read(path)
    model = load_model(path)  # merged on load
    with atomic_dir(Path(out), overwrite) as tmp:
        model.save_pretrained(str(tmp))
        AutoTokenizer.from_pretrained(str(path)).save_pretrained(str(tmp))
        if (path / "metrics.jsonl").exists():
            shutil.copy(path / "metrics.jsonl", tmp / "metrics.jsonl")
        write_manifest(tmp, task=manifest.task or "classify", stage="merge", args={**manifest.args, "lora": False},
                       parent=str(path), labels=manifest.labels, data_fingerprint=manifest.data_fingerprint,
                       metrics=manifest.metrics, data=manifest.data, lora=False,
                       primary_metric=manifest.primary_metric, base_model=manifest.base_model)
    return Path(out)
