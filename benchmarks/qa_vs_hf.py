"""SQuAD fine-tuning: danlu's qa task vs the Hugging Face `Trainer` recipe of the question-answering
example (examples/pytorch/question-answering: run_qa.py + utils_qa.py), same run, same inputs.

Both fine-tune the packaged MiniLM (minilm-l6) on the same seeded sample of SQuAD v1.1 train
questions, on the same windows (max length 384, doc stride 128), with the same batch, learning rate,
warmup, weight decay, clipping, steps, precision, seed and threads. The peer side is the recipe as
written: its `prepare_train_features` (windows padded to max length, `pad_to_max_length=True`, the
example's default), `default_data_collator`, `Trainer.train`, then `Trainer.predict` on
`prepare_validation_features` and the `postprocess_qa_predictions` n-best search; it is re-implemented
here from the recipe's description (transformers does not ship its examples), and its windows are
checked token for token against danlu's. A second peer configuration, `hf-dynamic`, is the recipe with
`--pad_to_max_length False` (padding per batch) and `group_by_length`, its strongest setting.
Both are scored on the same dev questions with the official SQuAD v1.1 exact match / F1.
Runs are interleaved (danlu, hf, hf-dynamic, danlu, ...); the throughput ratio is the median of
per-round ratios against the faster HF configuration.

    flock /tmp/danlu-cpu.lock .venv/bin/python benchmarks/qa_vs_hf.py [--steps 40] [--rounds 2] [--dev 300]

Writes benchmarks/results/qa_vs_hf.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from finetune_vs_hf import cpu_model

RESULTS = Path(__file__).resolve().parent / "results" / "qa_vs_hf.json"
MAX_LENGTH, DOC_STRIDE = 384, 128


# ---- the peer: the recipe's feature functions, on a batch dict as `datasets.map(batched=True)` gives ----


def hf_prepare_train_features(examples: dict, tokenizer, pad: bool) -> dict:
    """run_qa.py's prepare_train_features."""
    pad_on_right = tokenizer.padding_side == "right"
    examples["question"] = [q.lstrip() for q in examples["question"]]
    tokenized = tokenizer(
        examples["question" if pad_on_right else "context"], examples["context" if pad_on_right else "question"],
        truncation="only_second" if pad_on_right else "only_first", max_length=MAX_LENGTH, stride=DOC_STRIDE,
        return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length" if pad else False)
    sample_mapping = tokenized.pop("overflow_to_sample_mapping")
    offset_mapping = tokenized.pop("offset_mapping")
    tokenized["start_positions"], tokenized["end_positions"] = [], []
    for i, offsets in enumerate(offset_mapping):
        input_ids = tokenized["input_ids"][i]
        cls_index = input_ids.index(tokenizer.cls_token_id)
        sequence_ids = tokenized.sequence_ids(i)
        answers = examples["answers"][sample_mapping[i]]
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        token_start = 0
        while sequence_ids[token_start] != (1 if pad_on_right else 0):
            token_start += 1
        token_end = len(input_ids) - 1
        while sequence_ids[token_end] != (1 if pad_on_right else 0):
            token_end -= 1
        if not (offsets[token_start][0] <= start_char and offsets[token_end][1] >= end_char):
            tokenized["start_positions"].append(cls_index)
            tokenized["end_positions"].append(cls_index)
            continue
        while token_start < len(offsets) and offsets[token_start][0] <= start_char:
            token_start += 1
        tokenized["start_positions"].append(token_start - 1)
        while offsets[token_end][1] >= end_char:
            token_end -= 1
        tokenized["end_positions"].append(token_end + 1)
    return tokenized


def hf_prepare_validation_features(examples: dict, tokenizer) -> dict:
    """run_qa.py's prepare_validation_features (padded to max length, as the recipe does)."""
    pad_on_right = tokenizer.padding_side == "right"
    examples["question"] = [q.lstrip() for q in examples["question"]]
    tokenized = tokenizer(
        examples["question" if pad_on_right else "context"], examples["context" if pad_on_right else "question"],
        truncation="only_second" if pad_on_right else "only_first", max_length=MAX_LENGTH, stride=DOC_STRIDE,
        return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length")
    sample_mapping = tokenized.pop("overflow_to_sample_mapping")
    tokenized["example_id"] = []
    for i in range(len(tokenized["input_ids"])):
        sequence_ids = tokenized.sequence_ids(i)
        context_index = 1 if pad_on_right else 0
        tokenized["example_id"].append(examples["id"][sample_mapping[i]])
        tokenized["offset_mapping"][i] = [o if sequence_ids[k] == context_index else None
                                          for k, o in enumerate(tokenized["offset_mapping"][i])]
    return tokenized


def hf_postprocess(examples: dict, features: dict, start_all, end_all, n_best=20, max_answer_length=30) -> dict:
    """utils_qa.py's postprocess_qa_predictions for SQuAD v1.1 (no null answer): id -> answer text."""
    index = {k: i for i, k in enumerate(examples["id"])}
    per_example = collections.defaultdict(list)
    for i, example_id in enumerate(features["example_id"]):
        per_example[index[example_id]].append(i)
    predictions = {}
    for e, example_id in enumerate(examples["id"]):
        prelim = []
        for f in per_example[e]:
            start_logits, end_logits, offsets = start_all[f], end_all[f], features["offset_mapping"][f]
            for s in np.argsort(start_logits)[-1:-n_best - 1:-1].tolist():
                for t in np.argsort(end_logits)[-1:-n_best - 1:-1].tolist():
                    if s >= len(offsets) or t >= len(offsets) or offsets[s] is None or offsets[t] is None:
                        continue
                    if t < s or t - s + 1 > max_answer_length:
                        continue
                    prelim.append((start_logits[s] + end_logits[t], offsets[s][0], offsets[t][1]))
        best = sorted(prelim, key=lambda x: x[0], reverse=True)[:n_best]
        context = examples["context"][e]
        predictions[example_id] = context[best[0][1]:best[0][2]] if best else "empty"
    return predictions


class _Rows(torch.utils.data.Dataset):
    def __init__(self, columns: dict, keys: list[str]):
        self.rows = [{k: columns[k][i] for k in keys} for i in range(len(columns["input_ids"]))]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def _columns(examples) -> dict:
    return {"id": [e.id for e in examples], "question": [e.question for e in examples],
            "context": [e.context for e in examples],
            "answers": [{"text": list(e.answer_texts), "answer_start": list(e.answer_starts)} for e in examples]}


def hf_training_args(out, steps, bf16, hp, dynamic: bool):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=out, max_steps=steps, per_device_train_batch_size=hp["batch"], per_device_eval_batch_size=32,
        learning_rate=hp["lr"], warmup_steps=int(hp["warmup_ratio"] * steps), weight_decay=hp["weight_decay"],
        max_grad_norm=hp["max_grad_norm"], bf16=bf16, seed=hp["seed"], use_cpu=not torch.cuda.is_available(),
        save_strategy="no", eval_strategy="no", report_to=[], logging_steps=steps, disable_tqdm=True,
        dataloader_num_workers=0, train_sampling_strategy="group_by_length" if dynamic else "random")


def run_hf(ctx, steps, bf16, hp, dynamic: bool) -> tuple[float, float, float]:
    """Train with the recipe; return (seconds, exact match, F1) on the dev questions."""
    from transformers import DataCollatorWithPadding, Trainer, default_data_collator

    from danlu.data.squad import squad_metrics

    qa, tokenizer = ctx["qa"], ctx["tokenizer"]
    model = fresh_model(ctx, hp["seed"])
    train = hf_prepare_train_features(_columns(ctx["train"]), tokenizer, pad=not dynamic)
    keys = [k for k in ("input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions")
            if k in train]
    collator = DataCollatorWithPadding(tokenizer) if dynamic else default_data_collator
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model=model, args=hf_training_args(out, steps, bf16, hp, dynamic),
                          train_dataset=_Rows(train, keys), data_collator=collator, processing_class=tokenizer)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        dev = _columns(ctx["dev"])
        features = hf_prepare_validation_features(dict(dev), tokenizer)
        eval_keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in features]
        output = trainer.predict(_Rows(features, eval_keys))
    start_logits, end_logits = output.predictions
    answers = hf_postprocess(dev, features, start_logits, end_logits)
    metrics = squad_metrics([answers[i] for i in dev["id"]], [e.answer_texts for e in ctx["dev"]])
    return seconds, metrics["exact_match"], metrics["f1"]


# ---- danlu ----------------------------------------------------------------------------------------


def fresh_model(ctx, seed):
    from transformers import set_seed

    set_seed(seed)
    return ctx["qa"].build_model(ctx["model_path"], [])


def run_danlu(ctx, steps, bf16, hp) -> tuple[float, float, float]:
    from danlu.config import TrainArgs
    from danlu.train.loop import train

    qa, tokenizer = ctx["qa"], ctx["tokenizer"]
    model = fresh_model(ctx, hp["seed"])
    objective, lengths = qa.make_objective(tokenizer, ctx["train"], [], MAX_LENGTH, doc_stride=DOC_STRIDE)
    args = TrainArgs(max_steps=steps, batch_size=hp["batch"], lr=hp["lr"], warmup_ratio=hp["warmup_ratio"],
                     weight_decay=hp["weight_decay"], max_grad_norm=hp["max_grad_norm"], bf16=bf16,
                     seed=hp["seed"], log_every=steps, save_every=10 * steps)
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        train(model, objective, lengths, args, Path(run_dir))
        seconds = time.perf_counter() - started
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        metrics = qa.score(model, tokenizer, ctx["dev"], [], MAX_LENGTH, doc_stride=DOC_STRIDE)
    return seconds, metrics["exact_match"], metrics["f1"]


def check_same_windows(ctx) -> tuple[int, int]:
    """The peer's training windows (unpadded) are danlu's token for token; returns how many windows there
    are and in how many the answer positions differ (the recipe's start loop runs past the context onto
    [SEP] when an answer starts at a window's last context token: 1 window in 20k of SQuAD train)."""
    tokenizer = ctx["tokenizer"]
    peer = hf_prepare_train_features(_columns(ctx["train"]), tokenizer, pad=False)
    ours, _ = ctx["qa"].make_objective(tokenizer, ctx["train"], [], MAX_LENGTH, doc_stride=DOC_STRIDE)
    assert len(peer["input_ids"]) == len(ours.features)
    differ = 0
    for i, feature in enumerate(ours.features):
        assert feature["input_ids"] == peer["input_ids"][i]
        differ += (feature["start_positions"], feature["end_positions"]) != (peer["start_positions"][i],
                                                                            peer["end_positions"][i])
    return len(ours.features), differ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--train-examples", type=int, default=2000)
    parser.add_argument("--dev", type=int, default=300, help="the first N official dev questions")
    parser.add_argument("--precision", default="fp32", choices=["bf16", "fp32"])
    parser.add_argument("--output", default=str(RESULTS))
    opts = parser.parse_args()

    from transformers import AutoTokenizer

    from danlu.assets import resolve_model
    from danlu.hardware import bf16_is_fast
    from danlu.tasks import get_task
    from danlu.tasks.base import DataSpec

    hp = {"batch": opts.batch, "lr": 1e-4, "warmup_ratio": 0.1, "weight_decay": 0.01, "max_grad_norm": 1.0,
          "seed": 42}
    qa = get_task("qa")
    model_path = resolve_model("minilm-l6")
    data = qa.load_data(DataSpec("squad", seed=hp["seed"], max_train_examples=opts.train_examples))
    ctx = {"qa": qa, "model_path": model_path, "tokenizer": AutoTokenizer.from_pretrained(str(model_path)),
           "train": data.splits["train"], "dev": data.splits["validation"][:opts.dev]}
    windows, labels_differ = check_same_windows(ctx)
    bf16 = opts.precision == "bf16"
    samples = opts.steps * hp["batch"]
    report = {"model": "minilm-l6", "data": f"squad v1.1: {opts.train_examples} seeded train questions "
                                            f"({windows} windows), first {opts.dev} dev questions",
              "max_length": MAX_LENGTH, "doc_stride": DOC_STRIDE, "steps": opts.steps, "samples_per_run": samples,
              **hp, "precision": opts.precision, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "cpu": cpu_model(), "native_bf16": bf16_is_fast(), "same_windows_checked": windows,
              "windows_whose_answer_positions_differ_from_the_recipe": labels_differ,
              "load_average_at_start": os.getloadavg()}
    systems = {"danlu": lambda: run_danlu(ctx, opts.steps, bf16, hp),
               "hf": lambda: run_hf(ctx, opts.steps, bf16, hp, dynamic=False),
               "hf-dynamic": lambda: run_hf(ctx, opts.steps, bf16, hp, dynamic=True)}
    runs = {name: [] for name in systems}
    quality = {name: [] for name in systems}
    for round_ in range(opts.rounds):
        for name, fn in systems.items():  # interleaved: A B C A B C
            seconds, em, f1 = fn()
            runs[name].append(samples / seconds)
            quality[name].append({"exact_match": round(100 * em, 2), "f1": round(100 * f1, 2)})
            print(f"[round {round_ + 1}] {name:<10} {samples / seconds:6.2f} samples/s ({seconds:.1f} s)  "
                  f"EM {100 * em:.2f}  F1 {100 * f1:.2f}  load {os.getloadavg()[0]:.1f}", flush=True)
    best_hf = max(("hf", "hf-dynamic"), key=lambda n: statistics.median(runs[n]))
    median_f1 = {n: statistics.median(q["f1"] for q in v) for n, v in quality.items()}
    report.update({
        "samples_per_second": {n: [round(x, 2) for x in v] for n, v in runs.items()},
        "median_samples_per_second": {n: round(statistics.median(v), 2) for n, v in runs.items()},
        "dev_quality_official_0_100": quality,
        "strongest_hf": best_hf,
        "ratio_danlu_over_strongest_hf": round(statistics.median(
            d / h for d, h in zip(runs["danlu"], runs[best_hf])), 3),
        "ratio_danlu_over_hf_recipe_default": round(statistics.median(
            d / h for d, h in zip(runs["danlu"], runs["hf"])), 3),
        "f1_points_danlu_minus_strongest_hf": round(median_f1["danlu"] - median_f1[best_hf], 2),
        "load_average_at_end": os.getloadavg(),
    })
    print(f"danlu/{best_hf} = {report['ratio_danlu_over_strongest_hf']:.2f}x, danlu/hf = "
          f"{report['ratio_danlu_over_hf_recipe_default']:.2f}x; F1 danlu - {best_hf} = "
          f"{report['f1_points_danlu_minus_strongest_hf']:+.2f} points", flush=True)
    Path(opts.output).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {opts.output}")


if __name__ == "__main__":
    main()
