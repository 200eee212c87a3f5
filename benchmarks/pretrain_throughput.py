"""Pretraining throughput: danlu's loop vs the Hugging Face `Trainer`, same model, data, batch, steps.

Both pretrain the same freshly initialised BERT (masked LM, 15% masking with 80/10/10) on the same
packed 128-token windows of a prepared corpus (default: the packaged wiki-sample, prepared here if
needed), with the same batch, steps, learning rate, warmup, weight decay, clipping, precision, seed
and threads. The Trainer gets the windows as a dataset and masks them with its own
`DataCollatorForLanguageModeling`. Runs are interleaved (danlu, HF, danlu, HF, ...) and the ratio is
the median of the per-round ratios. Also measured in the same run: the matmul peak (2048 x 2048, fp32
and bf16), the achieved training FLOP/s (6 x parameters x tokens/s) as a fraction of it, and a
profile of a few danlu steps (where the time goes).

    .venv/bin/python benchmarks/pretrain_throughput.py [--size small] [--steps 20] [--rounds 2]

Writes benchmarks/results/pretrain_throughput.json.
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

RESULTS = Path(__file__).resolve().parent / "results" / "pretrain_throughput.json"


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of an n x n matmul in `dtype` (median of `repeats`)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - started)
    return 2 * n ** 3 / statistics.median(times)


def prepared_corpus(path: str) -> Path:
    from danlu.data.prepare import PrepareArgs, prepare

    out = Path(path)
    if not (out / "meta.json").exists():
        prepare(PrepareArgs(corpus=["wiki-sample"], out=str(out), vocab_size=8000))
    return out


def fresh_model(data, size: str, seq_len: int, seed: int):
    from transformers import set_seed

    from danlu.pretrain.models import build_model, model_config

    set_seed(seed)
    return build_model("mlm", model_config("bert", size, data.vocab_size, seq_len, data.meta["special_ids"], {}))


def run_danlu(ctx, bf16: bool, hp) -> float:
    from danlu.config import TrainArgs
    from danlu.pretrain.objectives import PretrainingModel
    from danlu.train.loop import train

    model = PretrainingModel(fresh_model(ctx["data"], hp["size"], hp["seq_len"], hp["seed"]), "mlm")
    args = TrainArgs(max_steps=hp["steps"], batch_size=hp["batch"], lr=hp["lr"], warmup_ratio=hp["warmup_ratio"],
                     weight_decay=hp["weight_decay"], max_grad_norm=hp["max_grad_norm"], bf16=bf16,
                     seed=hp["seed"], log_every=hp["steps"], save_every=10 * hp["steps"])
    objective = ctx["objective"]
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        train(model, objective, [hp["seq_len"]] * len(objective), args, Path(run_dir))
        return time.perf_counter() - started


class _Windows(torch.utils.data.Dataset):
    """The same [CLS] window [SEP] sequences danlu trains on, unmasked (the collator masks them)."""

    def __init__(self, objective):
        self.objective = objective

    def __len__(self):
        return len(self.objective)

    def __getitem__(self, i):
        import numpy as np

        ids = np.concatenate([[self.objective.cls_id], self.objective.windows.tokens(i), [self.objective.sep_id]])
        return {"input_ids": torch.from_numpy(ids)}


def run_hf(ctx, bf16: bool, hp) -> float:
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    model = fresh_model(ctx["data"], hp["size"], hp["seq_len"], hp["seed"])
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, max_steps=hp["steps"], per_device_train_batch_size=hp["batch"], learning_rate=hp["lr"],
            warmup_steps=int(hp["warmup_ratio"] * hp["steps"]), weight_decay=hp["weight_decay"],
            max_grad_norm=hp["max_grad_norm"], bf16=bf16, seed=hp["seed"], use_cpu=not torch.cuda.is_available(),
            save_strategy="no", eval_strategy="no", report_to=[], logging_steps=hp["steps"], disable_tqdm=True,
            dataloader_num_workers=0)
        trainer = Trainer(model=model, args=args, train_dataset=_Windows(ctx["objective"]),
                          data_collator=DataCollatorForLanguageModeling(ctx["tokenizer"], mlm_probability=0.15))
        started = time.perf_counter()
        trainer.train()
        return time.perf_counter() - started


def profile_danlu(ctx, bf16: bool, hp, steps: int = 3) -> list[dict]:
    """The ops that take the most time in a few danlu training steps (forward, backward, AdamW)."""
    from torch.profiler import ProfilerActivity, profile

    from danlu.pretrain.objectives import PretrainingModel
    from danlu.train.loop import make_optimizer

    model = PretrainingModel(fresh_model(ctx["data"], hp["size"], hp["seq_len"], hp["seed"]), "mlm")
    optimizer = make_optimizer(model, hp["lr"], hp["weight_decay"])
    batches = [ctx["objective"].collate(list(range(i * hp["batch"], (i + 1) * hp["batch"]))) for i in range(steps + 1)]

    def step(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch)["loss_sum"] / ctx["objective"].count(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), hp["max_grad_norm"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(batches[0])  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches[1:]:
            step(batch)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    return [{"op": e.key, "share_of_self_time": round(e.self_cpu_time_total / total, 3), "calls": e.count}
            for e in top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=["tiny", "small", "base"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--precision", nargs="+", default=None, choices=["bf16", "fp32"],
                        help="default: fp32 and bf16 where bf16 is native here, else fp32 only")
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "danlu-bench-wiki-8k"))
    parser.add_argument("--output", default=str(RESULTS))
    opts = parser.parse_args()
    from danlu.hardware import bf16_is_fast

    if opts.precision is None:
        opts.precision = ["fp32", "bf16"] if bf16_is_fast() else ["fp32"]
        if not bf16_is_fast():
            print("bf16 skipped: this CPU has no native bfloat16 (emulated bf16 is far slower than fp32)")

    from danlu.pretrain.data import load_prepared
    from danlu.pretrain.models import count_parameters
    from danlu.pretrain.run import build_objective

    hp = {"size": opts.size, "seq_len": 128, "batch": opts.batch, "steps": opts.steps, "lr": 5e-4,
          "warmup_ratio": 0.05, "weight_decay": 0.01, "max_grad_norm": 1.0, "seed": 42}
    data = load_prepared(prepared_corpus(opts.data))
    objective = build_objective("mlm", data, "train", hp["seq_len"], 0.15, hp["seed"])
    ctx = {"data": data, "objective": objective, "tokenizer": data.tokenizer()}
    probe = fresh_model(data, opts.size, hp["seq_len"], hp["seed"])
    params = count_parameters(probe)
    # Kaplan et al.'s N: without the embedding tables (a lookup, not a matmul). The tied output
    # projection is a real matmul, but danlu applies it to the masked 15% of positions only.
    embeddings = sum(p.numel() for p in probe.bert.embeddings.parameters())
    del probe
    tokens = hp["steps"] * hp["batch"] * hp["seq_len"]
    report = {"model": f"bert-{opts.size} (masked LM)", "parameters": params,
              "non_embedding_parameters": params - embeddings, "data": str(opts.data),
              "vocab_size": data.vocab_size, **hp, "tokens_per_run": tokens, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "native_bf16": bf16_is_fast(), "load_average_at_start": os.getloadavg(), "precisions": {}}
    systems = {"danlu": run_danlu, "hf-trainer": run_hf}
    for precision in opts.precision:
        bf16 = precision == "bf16"
        peak = matmul_peak(torch.bfloat16 if bf16 else torch.float32)
        runs = {name: [] for name in systems}
        for round_ in range(opts.rounds):
            for name, fn in systems.items():  # interleaved: A B A B
                seconds = fn(ctx, bf16, hp)
                runs[name].append(tokens / seconds)
                print(f"[{precision} round {round_ + 1}] {name:<10} {tokens / seconds:9.1f} tokens/s "
                      f"({seconds:.1f} s)", flush=True)
        peak_after = matmul_peak(torch.bfloat16 if bf16 else torch.float32)
        median = {n: statistics.median(v) for n, v in runs.items()}
        ratio = statistics.median(d / h for d, h in zip(runs["danlu"], runs["hf-trainer"]))
        achieved = {n: 6 * params * t for n, t in median.items()}
        achieved_non_embedding = {n: 6 * (params - embeddings) * t for n, t in median.items()}
        entry = {
            "tokens_per_second": {n: [round(x, 1) for x in v] for n, v in runs.items()},
            "median_tokens_per_second": {n: round(v, 1) for n, v in median.items()},
            "ratio_danlu_over_hf_trainer": round(ratio, 3),
            "matmul_peak_flops_2048": [round(peak), round(peak_after)],
            "achieved_flops_6nd": {n: round(v) for n, v in achieved.items()},
            "fraction_of_matmul_peak": {n: round(v / max(peak, peak_after), 4) for n, v in achieved.items()},
            "fraction_of_matmul_peak_non_embedding": {n: round(v / max(peak, peak_after), 4)
                                                      for n, v in achieved_non_embedding.items()},
            "profile_danlu_top_ops": profile_danlu(ctx, bf16, hp),
        }
        report["precisions"][precision] = entry
        _write(opts.output, report)  # after each precision: a long bf16 run cannot lose the fp32 numbers
        print(f"{precision}: danlu/HF Trainer = {ratio:.2f}x; danlu {median['danlu']:.0f} tokens/s = "
              f"{entry['fraction_of_matmul_peak']['danlu']:.1%} (6ND, all parameters) / "
              f"{entry['fraction_of_matmul_peak_non_embedding']['danlu']:.1%} (non-embedding) of the "
              f"{max(peak, peak_after) / 1e9:.0f} GFLOP/s matmul peak", flush=True)
    _write(opts.output, report)
    print(f"wrote {opts.output}")


def _write(output: str, report: dict) -> None:
    report["load_average_at_end"] = os.getloadavg()
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
