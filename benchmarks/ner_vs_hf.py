"""NER fine-tuning: danlu's task + loop vs the Hugging Face `Trainer` recipe, same run, same inputs.

Both fine-tune the packaged MiniLM (minilm-l6) as a token classifier on the packaged CoNLL-2003
training split with the same hyperparameters (batch, max length, steps, learning rate, warmup,
weight decay, clipping, precision, seed, threads). The peer is the transformers token-classification
example's recipe: `tokenize_and_align_labels` (first subword labelled, -100 elsewhere, truncation at
max length), `DataCollatorForTokenClassification`, `AutoModelForTokenClassification` and `Trainer`.
danlu runs `danlu.tasks.ner.make_objective` (the same alignment; long sentences windowed) through
`danlu.train.loop.train`. Featurisation is timed apart for both. Each trained model is scored on the
CoNLL-2003 test split by the same scorer (seqeval strict IOB2 entity F1, `danlu.tasks.ner.score`).
Runs are interleaved, the order turning each round (danlu, hf, hf-grouped; hf, hf-grouped, danlu; ...),
and round r trains every system with seed 42 + r, so F1 is compared over as many seeds as rounds.
Both write one final checkpoint inside the timed call. The throughput ratio is the median of the
per-round ratios against the faster HF configuration (`hf`: random sampler as in the example;
`hf-grouped`: `train_sampling_strategy="group_by_length"`); F1 is compared on the medians.

    flock /tmp/danlu-cpu.lock .venv/bin/python benchmarks/ner_vs_hf.py [--steps 300] [--rounds 2]

Writes benchmarks/results/ner_vs_hf.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_vs_hf import cpu_model, train_with_hf_trainer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "ner_vs_hf.json"


def hf_features(tokenizer, sentences, labels, max_length):
    """The transformers example's `tokenize_and_align_labels` (label_all_tokens=False)."""
    index = {label: i for i, label in enumerate(labels)}
    enc = tokenizer([s.tokens for s in sentences], truncation=True, max_length=max_length,
                    is_split_into_words=True)
    rows = []
    for i, sentence in enumerate(sentences):
        previous, aligned = None, []
        for word in enc.word_ids(i):
            aligned.append(-100 if word is None or word == previous else index[sentence.tags[word]])
            previous = word
        rows.append({**{k: enc[k][i] for k in enc.keys()}, "labels": aligned})
    return rows


def fresh_model(model_path, labels, seed):
    from transformers import set_seed

    from danlu.tasks import ner

    set_seed(seed)
    return ner.build_model(model_path, labels)


def run_danlu(ctx, steps, bf16, hp):
    from danlu.config import TrainArgs
    from danlu.train.loop import train

    model = fresh_model(ctx["model_path"], ctx["labels"], hp["seed"])
    args = TrainArgs(max_steps=steps, batch_size=hp["batch"], lr=hp["lr"], warmup_ratio=hp["warmup_ratio"],
                     weight_decay=hp["weight_decay"], max_grad_norm=hp["max_grad_norm"], bf16=bf16,
                     seed=hp["seed"], log_every=steps, save_every=10 * steps)
    objective, lengths = ctx["danlu"]
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        train(model, objective, lengths, args, Path(run_dir))
        seconds = time.perf_counter() - started
    return seconds, model


def run_hf(ctx, steps, bf16, hp, grouped: bool):
    from transformers import DataCollatorForTokenClassification

    model = fresh_model(ctx["model_path"], ctx["labels"], hp["seed"])
    seconds = train_with_hf_trainer(model, ctx["hf"], DataCollatorForTokenClassification(ctx["tokenizer"]),
                                    ctx["tokenizer"], steps, bf16, hp, grouped)
    return seconds, model


def test_f1(ctx, model, max_length) -> float:
    from danlu.tasks import ner

    model.float().eval()
    return ner.score(model, ctx["tokenizer"], ctx["test"], ctx["labels"], max_length)["f1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precision", nargs="+", default=None, choices=["bf16", "fp32"],
                        help="default: bf16 where it is native here, else fp32")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--systems", nargs="+", default=["danlu", "hf", "hf-grouped"],
                        choices=["danlu", "hf", "hf-grouped"])
    parser.add_argument("--test-sentences", type=int, default=0, help="score on the first N test sentences (0: all)")
    parser.add_argument("--seed", type=int, default=42, help="round r uses seed SEED + r for every system")
    parser.add_argument("--output", default=str(RESULTS))
    opts = parser.parse_args()

    from transformers import AutoTokenizer

    from danlu.assets import resolve_model
    from danlu.data.ner import load_ner
    from danlu.hardware import bf16_is_fast
    from danlu.tasks import ner

    if opts.precision is None:
        opts.precision = ["bf16"] if bf16_is_fast() else ["fp32"]
    hp = {"batch": 32, "lr": 1e-4, "warmup_ratio": 0.06, "weight_decay": 0.01, "max_grad_norm": 1.0, "seed": opts.seed}
    model_path = resolve_model("minilm-l6")
    data = load_ner("conll2003")
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    train_split = data.splits["train"]
    started = time.perf_counter()
    danlu_features = ner.make_objective(tokenizer, train_split, data.labels, opts.max_length)
    danlu_seconds = time.perf_counter() - started
    started = time.perf_counter()
    hf_rows = hf_features(tokenizer, train_split, data.labels, opts.max_length)
    hf_seconds = time.perf_counter() - started
    ctx = {"model_path": model_path, "labels": data.labels, "tokenizer": tokenizer, "danlu": danlu_features,
           "hf": hf_rows, "test": data.splits["test"][:opts.test_sentences or None]}
    samples = opts.steps * hp["batch"]
    report = {"model": "minilm-l6", "data": "conll2003 (train; F1 on test, seqeval strict IOB2)",
              "steps": opts.steps, "samples_per_run": samples, "test_sentences": len(ctx["test"]), "max_length": opts.max_length, **hp,
              "seeds": [opts.seed + r for r in range(opts.rounds)],
              "threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": cpu_model(),
              "native_bf16": bf16_is_fast(),
              "featurize_seconds": {"danlu": round(danlu_seconds, 2), "hf": round(hf_seconds, 2)},
              "load_average_at_start": os.getloadavg(), "precisions": {}}
    runners = {"danlu": lambda bf16: run_danlu(ctx, opts.steps, bf16, hp),
               "hf": lambda bf16: run_hf(ctx, opts.steps, bf16, hp, grouped=False),
               "hf-grouped": lambda bf16: run_hf(ctx, opts.steps, bf16, hp, grouped=True)}
    systems = {name: runners[name] for name in opts.systems}
    for precision in opts.precision:
        bf16 = precision == "bf16"
        speed = {name: [] for name in systems}
        f1 = {name: [] for name in systems}
        names = list(systems)
        for round_ in range(opts.rounds):
            # Interleaved, and the order turns each round (A B C, B C A, ...) so no system always runs
            # first on a cold cache; each round has its own seed, the same for every system.
            hp["seed"] = opts.seed + round_
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                seconds, model = systems[name](bf16)
                speed[name].append(samples / seconds)
                f1[name].append(test_f1(ctx, model, opts.max_length))
                print(f"[{precision} round {round_ + 1}] {name:<11} {samples / seconds:7.1f} samples/s "
                      f"({seconds:.1f} s)  test F1 {f1[name][-1]:.4f}  load {os.getloadavg()[0]:.1f}", flush=True)
                del model
                report["precisions"][precision] = {"partial": True, "samples_per_second": speed, "test_f1": f1}
                write(report, opts.output)  # so far: a run cut short still leaves its measurements
        peers = [n for n in ("hf", "hf-grouped") if n in systems]
        entry = {
            "samples_per_second": {n: [round(x, 2) for x in v] for n, v in speed.items()},
            "median_samples_per_second": {n: round(statistics.median(v), 2) for n, v in speed.items()},
            "test_f1": {n: [round(x, 4) for x in v] for n, v in f1.items()},
            "median_test_f1": {n: round(statistics.median(v), 4) for n, v in f1.items()},
        }
        if "danlu" in systems and peers:
            best = max(peers, key=lambda n: statistics.median(speed[n]))
            entry["strongest_hf"] = best
            entry["ratio_danlu_over_strongest_hf"] = round(statistics.median(
                d / h for d, h in zip(speed["danlu"], speed[best])), 3)
            # Each seed gives each system other batches (other padding), so a round's pair is not matched:
            # the ratio of all samples over all seconds, across the same seeds, is the steadier figure.
            entry["aggregate_ratio_danlu_over_strongest_hf"] = round(
                statistics.harmonic_mean(speed["danlu"]) / statistics.harmonic_mean(speed[best]), 3)
            entry["ratio_danlu_over_hf_default"] = round(statistics.median(
                d / h for d, h in zip(speed["danlu"], speed["hf"])), 3) if "hf" in speed else None
            entry["f1_points_danlu_minus_strongest_hf"] = round(
                100 * (statistics.median(f1["danlu"]) - statistics.median(f1[best])), 2)
            print(f"{precision}: danlu/{best} = {entry['ratio_danlu_over_strongest_hf']:.2f}x samples/s (median of "
                  f"rounds), {entry['aggregate_ratio_danlu_over_strongest_hf']:.2f}x (all samples / all seconds); "
                  f"test F1 danlu {entry['median_test_f1']['danlu']:.4f} vs {best} "
                  f"{entry['median_test_f1'][best]:.4f} ({entry['f1_points_danlu_minus_strongest_hf']:+.2f} points)",
                  flush=True)
        report["precisions"][precision] = entry
    report["load_average_at_end"] = os.getloadavg()
    write(report, opts.output)
    print(f"wrote {opts.output}")


def write(report: dict, output: str) -> None:
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
