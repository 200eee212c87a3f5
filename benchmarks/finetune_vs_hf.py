"""Fine-tuning throughput: danlu's loop vs the Hugging Face `Trainer`, same run, same inputs.

Both fine-tune the packaged MiniLM (minilm-l6) on the packaged Rotten Tomatoes training split with
the same hyperparameters (batch, max length, steps, learning rate, warmup, weight decay, clipping,
precision, seed, threads), from the same pre-tokenised features (tokenisation is timed once, apart:
it is the same tokenizer call for both). Both are then scored on the validation split by the same
scorer. The runs are interleaved (danlu, HF, HF grouped, danlu, ...) and the ratio reported is the
median of the per-round ratios, against the *faster* of the two HF configurations:

- `hf`: the Trainer as most people run it (random sampler, dynamic padding per batch);
- `hf-grouped`: the Trainer with `train_sampling_strategy="group_by_length"` (its own answer to padding).

    .venv/bin/python benchmarks/finetune_vs_hf.py [--steps 120] [--rounds 2] [--precision bf16 fp32]

Writes benchmarks/results/finetune_vs_hf.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "finetune_vs_hf.json"


def load_features(max_length: int):
    from transformers import AutoTokenizer

    from danlu.assets import resolve_model
    from danlu.data.classification import load_classification
    from danlu.tasks.classify import encode

    model_path = resolve_model("minilm-l6")
    data = load_classification("rotten-tomatoes")
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    started = time.perf_counter()
    features = encode(tokenizer, data.splits["train"].texts, max_length)
    tokenize_seconds = time.perf_counter() - started
    label_ids = [data.labels.index(y) for y in data.splits["train"].labels]
    return model_path, data, tokenizer, features, label_ids, tokenize_seconds


def fresh_model(model_path, labels, seed):
    from transformers import AutoModelForSequenceClassification, set_seed
    from transformers.utils import logging

    logging.set_verbosity_error()
    set_seed(seed)
    return AutoModelForSequenceClassification.from_pretrained(
        str(model_path), num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)}, ignore_mismatched_sizes=True)


def run_danlu(ctx, steps, bf16, hp) -> tuple[float, torch.nn.Module]:
    from danlu.config import TrainArgs
    from danlu.tasks.classify import ClassificationObjective
    from danlu.train.loop import train

    model = fresh_model(ctx["model_path"], ctx["data"].labels, hp["seed"])
    args = TrainArgs(max_steps=steps, batch_size=hp["batch"], lr=hp["lr"], warmup_ratio=hp["warmup_ratio"],
                     weight_decay=hp["weight_decay"], max_grad_norm=hp["max_grad_norm"], bf16=bf16,
                     seed=hp["seed"], log_every=steps, save_every=10 * steps)
    objective = ClassificationObjective(ctx["features"], ctx["label_ids"], ctx["tokenizer"].pad_token_id)
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        train(model, objective, [len(f["input_ids"]) for f in ctx["features"]], args, Path(run_dir))
        seconds = time.perf_counter() - started
    return seconds, model


class _Rows(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def train_with_hf_trainer(model, rows, collator, tokenizer, steps, bf16, hp, grouped: bool) -> float:
    """Seconds `Trainer.train()` takes for `steps` steps over `rows` (dicts of features and labels).

    The Trainer writes one checkpoint (model, optimizer, scheduler, RNG) at the last step, as danlu's
    loop does at the end of every run: both timings hold the same work."""
    from transformers import Trainer, TrainingArguments

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, max_steps=steps, per_device_train_batch_size=hp["batch"], learning_rate=hp["lr"],
            warmup_steps=int(hp["warmup_ratio"] * steps), weight_decay=hp["weight_decay"],
            max_grad_norm=hp["max_grad_norm"], bf16=bf16, seed=hp["seed"], use_cpu=not torch.cuda.is_available(),
            save_strategy="steps", save_steps=steps, eval_strategy="no", report_to=[], logging_steps=steps, disable_tqdm=True,
            dataloader_num_workers=0,
            train_sampling_strategy="group_by_length" if grouped else "random")
        trainer = Trainer(model=model, args=args, train_dataset=_Rows(rows), data_collator=collator,
                          processing_class=tokenizer)
        started = time.perf_counter()
        trainer.train()
        return time.perf_counter() - started


def run_hf(ctx, steps, bf16, hp, grouped: bool) -> tuple[float, torch.nn.Module]:
    from transformers import DataCollatorWithPadding

    model = fresh_model(ctx["model_path"], ctx["data"].labels, hp["seed"])
    rows = [{**f, "labels": y} for f, y in zip(ctx["features"], ctx["label_ids"])]
    seconds = train_with_hf_trainer(model, rows, DataCollatorWithPadding(ctx["tokenizer"]), ctx["tokenizer"],
                                    steps, bf16, hp, grouped)
    return seconds, model


def validation_accuracy(ctx, model, max_length) -> float:
    from danlu.tasks.classify import score_texts as score

    model.eval()
    val = ctx["data"].splits["validation"]
    return score(model.float(), ctx["tokenizer"], val.texts, val.labels, ctx["data"].labels, max_length)["accuracy"]


def cpu_model() -> str:
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precision", nargs="+", default=None, choices=["bf16", "fp32"],
                        help="default: bf16 and fp32 where bf16 is native here, else fp32 only")
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--output", default=str(RESULTS))
    opts = parser.parse_args()

    from danlu.hardware import bf16_is_fast

    if opts.precision is None:
        opts.precision = ["bf16", "fp32"] if bf16_is_fast() else ["fp32"]
        if not bf16_is_fast():
            print("bf16 skipped: this CPU has no native bfloat16 (emulated bf16 is far slower than fp32)")
    hp = {"batch": 32, "lr": 1e-4, "warmup_ratio": 0.06, "weight_decay": 0.01, "max_grad_norm": 1.0, "seed": 42}
    model_path, data, tokenizer, features, label_ids, tokenize_seconds = load_features(opts.max_length)
    ctx = {"model_path": model_path, "data": data, "tokenizer": tokenizer, "features": features,
           "label_ids": label_ids}
    samples = opts.steps * hp["batch"]
    report = {"model": "minilm-l6", "data": "rotten-tomatoes (train split)", "steps": opts.steps,
              "samples_per_run": samples, "max_length": opts.max_length, **hp,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": cpu_model(),
              "native_bf16": bf16_is_fast(),
              "tokenize_seconds_train_split": round(tokenize_seconds, 3),
              "load_average_at_start": os.getloadavg(), "precisions": {}}
    systems = {"danlu": lambda bf16: run_danlu(ctx, opts.steps, bf16, hp),
               "hf": lambda bf16: run_hf(ctx, opts.steps, bf16, hp, grouped=False),
               "hf-grouped": lambda bf16: run_hf(ctx, opts.steps, bf16, hp, grouped=True)}
    for precision in opts.precision:
        bf16 = precision == "bf16"
        runs = {name: [] for name in systems}
        accuracy = {}
        for round_ in range(opts.rounds):
            for name, fn in systems.items():  # interleaved: A B C A B C
                seconds, model = fn(bf16)
                runs[name].append(samples / seconds)
                print(f"[{precision} round {round_ + 1}] {name:<11} {samples / seconds:7.1f} samples/s "
                      f"({seconds:.1f} s)", flush=True)
                if round_ == 0:
                    accuracy[name] = validation_accuracy(ctx, model, opts.max_length)
                del model
        best_hf = max(("hf", "hf-grouped"), key=lambda n: statistics.median(runs[n]))
        ratios = [d / h for d, h in zip(runs["danlu"], runs[best_hf])]
        entry = {
            "samples_per_second": {n: [round(x, 2) for x in v] for n, v in runs.items()},
            "median_samples_per_second": {n: round(statistics.median(v), 2) for n, v in runs.items()},
            "validation_accuracy": {n: round(a, 4) for n, a in accuracy.items()},
            "strongest_hf": best_hf,
            "ratio_danlu_over_strongest_hf": round(statistics.median(ratios), 3),
            "ratio_danlu_over_hf_default": round(statistics.median(
                d / h for d, h in zip(runs["danlu"], runs["hf"])), 3),
        }
        report["precisions"][precision] = entry
        print(f"{precision}: danlu/{best_hf} = {entry['ratio_danlu_over_strongest_hf']:.2f}x, "
              f"danlu/hf = {entry['ratio_danlu_over_hf_default']:.2f}x; validation accuracy "
              + ", ".join(f"{n} {a:.4f}" for n, a in entry["validation_accuracy"].items()), flush=True)
    report["load_average_at_end"] = os.getloadavg()
    Path(opts.output).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {opts.output}")


if __name__ == "__main__":
    main()
