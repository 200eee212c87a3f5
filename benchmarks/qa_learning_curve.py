"""Learning curve of the qa task on this machine: dev F1 of MiniLM (minilm-l6) after 2k, 8k and 20k
SQuAD v1.1 training questions, in one run (one pass over a seeded 20k sample, the schedule of
recipes/qa-squad.yaml: batch 16, lr 1e-4, 10% warmup, linear decay), scored with the official
exact match / F1 on the first `--dev` official dev questions (0 = all 10,570) after each point.
Each point is written to the results file as soon as it is measured (a run cut short keeps them).

    flock /tmp/danlu-cpu.lock .venv/bin/python benchmarks/qa_learning_curve.py [--dev 2000] [--points 2000 8000 20000]

Writes benchmarks/results/qa_learning_curve.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from finetune_vs_hf import cpu_model

RESULTS = Path(__file__).resolve().parent / "results" / "qa_learning_curve.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, nargs="+", default=[2000, 8000, 20000],
                        help="training questions seen at which to score (the last is the sample size)")
    parser.add_argument("--dev", type=int, default=2000, help="the first N official dev questions (0 = all)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--output", default=str(RESULTS))
    opts = parser.parse_args()

    from transformers import AutoTokenizer, set_seed

    from danlu.assets import resolve_model
    from danlu.config import TrainArgs
    from danlu.tasks import get_task
    from danlu.tasks.base import DataSpec
    from danlu.train.loop import EvalResult, train

    qa = get_task("qa")
    model_path = resolve_model("minilm-l6")
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    data = qa.load_data(DataSpec("squad", seed=42, max_train_examples=max(opts.points)))
    dev = data.splits["validation"][:opts.dev or None]
    objective, lengths = qa.make_objective(tokenizer, data.splits["train"], [], qa.MAX_LENGTH)
    # One evaluation per point: the loop evaluates every `eval_every` steps, the callback scores only at the
    # steps where a point's questions have been seen (a step's windows ~ its questions: 1.01 windows each).
    windows_per_question = len(lengths) / len(data.splits["train"])
    steps, eval_every = round(len(lengths) / opts.batch), 25
    step_of = {max(eval_every, round(p * windows_per_question / opts.batch / eval_every) * eval_every): p
               for p in opts.points[:-1]}
    step_of[steps] = opts.points[-1]
    report = {"model": "minilm-l6", "data": f"squad v1.1, seeded sample of {max(opts.points)} train questions "
                                            f"({len(lengths)} windows), first {len(dev)} dev questions",
              "max_length": qa.MAX_LENGTH, "doc_stride": qa.DOC_STRIDE, "batch": opts.batch, "lr": opts.lr,
              "warmup_ratio": 0.1, "epochs": 1, "bf16": opts.bf16, "threads": torch.get_num_threads(),
              "cpu": cpu_model(), "torch": torch.__version__, "load_average_at_start": os.getloadavg(), "points": []}
    started = time.perf_counter()
    calls = {"n": 0}

    def evaluate(model) -> EvalResult:
        calls["n"] += 1
        step = min(calls["n"] * eval_every, steps)
        if step not in step_of:
            return EvalResult({}, float("-inf"))
        t = time.perf_counter()
        metrics = qa.score(model, tokenizer, dev, [], qa.MAX_LENGTH)
        point = {"train_questions_seen": step_of[step], "step": step,
                 "windows_seen": step * opts.batch, "dev_exact_match": round(100 * metrics["exact_match"], 2),
                 "dev_f1": round(100 * metrics["f1"], 2), "dev_questions": metrics["examples"],
                 "eval_seconds": round(time.perf_counter() - t, 1),
                 "elapsed_seconds": round(time.perf_counter() - started, 1), "load_average": os.getloadavg()}
        report["points"].append(point)
        Path(opts.output).write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(point), flush=True)
        return EvalResult(metrics, metrics["f1"])

    set_seed(42)
    model = qa.build_model(model_path, [])
    args = TrainArgs(max_steps=steps, batch_size=opts.batch, lr=opts.lr, warmup_ratio=0.1, bf16=opts.bf16,
                     seed=42, eval_every=eval_every, save_every=10 * steps, log_every=50)
    with tempfile.TemporaryDirectory() as run_dir:
        result = train(model, objective, lengths, args, Path(run_dir), evaluate=evaluate)
    report.update(train_seconds=round(result.train_seconds, 1),
                  train_windows_per_second=round(result.examples_per_second, 2),
                  load_average_at_end=os.getloadavg())
    Path(opts.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {opts.output}")


if __name__ == "__main__":
    main()
