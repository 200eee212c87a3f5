"""Does pretraining a small Chinese BERT pay? Evidence for issue 17, in one run on the same splits and seeds.

On the packaged `chinese-sentiment` reviews (de-duplicated, conflicting labels dropped, split 80/10/10
stratified with each seed), with the same fine-tuning budget (optimizer steps, batch, max length) for the small BERTs:
  1. `pretrained`: the BERT of recipes/chinese-sentiment.yaml (danlu prepare peoples-daily + danlu pretrain
     --objective mlm) fine-tuned;
  2. `random-init`: the same architecture and tokenizer from random weights, fine-tuned alike;
  3. `tfidf-lr`: character 1-2-gram TF-IDF + logistic regression (scikit-learn; C picked on validation);
  4. `minilm-l6`: the packaged English MiniLM fine-tuned (its unknown-token rate on this data is reported);
  5. optionally `domain-adapted`: the pretrained BERT's masked-LM training continued (--adapt-steps) on the
     seed's train-split review texts only (no labels), then fine-tuned alike.
Each is run with every seed (MiniLM with --minilm-seeds and --minilm-steps: one of its steps costs ~25 of the
small BERT's); test accuracy and macro-F1 (mean, std), training seconds, the pretraining curve and the load on
the machine go to benchmarks/results/chinese_pretraining_pays.json, written by this script after every run
(`partial` until the last). Heavy runs share 2 cores with other people's work: run it under the CPU lock,
one thread per process.

    flock /tmp/danlu-cpu.lock env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/chinese_pretraining_pays.py \
        --work /tmp/zh-bench --minilm-seeds 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "chinese_pretraining_pays.json"
DATA = "chinese-sentiment"


def danlu(*args: str, log: Path) -> float:
    """Run one danlu command (output to `log`); return its wall seconds, or exit with its log's tail."""
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        result = subprocess.run([sys.executable, "-m", "danlu", *args], stdout=f, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        sys.exit(f"danlu {' '.join(args)} failed; last lines of {log}:\n"
                 + "\n".join(log.read_text(encoding="utf-8").splitlines()[-15:]))
    return round(time.perf_counter() - started, 1)


class LoadSampler:
    """os.getloadavg() every `every` seconds in a background thread, so the JSON says how busy the machine was."""

    def __init__(self, every: float = 30.0):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def _run(self, every: float) -> None:
        while not self._stop.is_set():
            self.samples.append(round(os.getloadavg()[0], 2))
            self._stop.wait(every)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        s = self.samples or [0.0]
        return {"load_1m_min": min(s), "load_1m_median": statistics.median(s), "load_1m_max": max(s),
                "samples": len(s)}


def cpu_model() -> str:
    """'AMD EPYC (family 25, model 17)': the model name with family and model, as /proc/cpuinfo gives them."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
                      if ":" in line)
    except OSError:
        return platform.processor()
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"


def random_init_model(pretrained: Path, out: Path, seed: int) -> Path:
    """The pretrained model's architecture and tokenizer with fresh random weights (seeded)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, BertForMaskedLM

    if not (out / "model.safetensors").exists():
        torch.manual_seed(seed)
        model = BertForMaskedLM(AutoConfig.from_pretrained(str(pretrained)))
        model.save_pretrained(str(out))
        AutoTokenizer.from_pretrained(str(pretrained)).save_pretrained(str(out))
    return out


def domain_adapted(bert: Path, work: Path, seed: int, args) -> Path:
    """The pretrained BERT with its masked-LM training continued on the seed's train-split review texts (no
    labels, nothing from validation or test): does pretraining pay once it has seen text like the task's?"""
    from danlu.data.classification import load_classification

    out = work / f"adapted-{seed}-a{args.adapt_steps}"
    if (out / "danlu.json").exists():
        return out
    texts = work / f"reviews-train-{seed}.jsonl"
    texts.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n"
                             for t in load_classification(DATA, seed=seed).splits["train"].texts), encoding="utf-8")
    corpus = work / f"reviews-corpus-{seed}"
    if not (corpus / "stats.json").exists():
        danlu("prepare", str(texts), "--out", str(corpus), "--tokenizer", str(bert), "--min-length", "1",
              "--dedup", "exact", "--seq-len", str(args.seq_len), log=work / f"reviews-prepare-{seed}.log")
    danlu("pretrain", "--data", str(corpus), "--out", str(out), "--objective", "mlm", "--init", str(bert),
          "--seq-len", str(args.seq_len), "--batch-size", str(args.pretrain_batch_size), "--max-steps",
          str(args.adapt_steps), "--lr", str(args.pretrain_lr / 2), "--warmup-steps", str(max(1, args.adapt_steps // 20)),
          "--eval-every", str(max(1, args.adapt_steps // 2)), "--eval-sequences", "128",
          log=work / f"adapt-{seed}.log")
    return out


def unknown_rate(tokenizer_path: str, texts: list[str]) -> float:
    """Share of the tokens of `texts` that are the tokenizer's unknown token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    total = sum(len(x) for x in ids)
    return round(sum(i == tokenizer.unk_token_id for x in ids for i in x) / max(1, total), 4)


def tfidf_lr(seed: int) -> dict:
    """Character 1-2-gram TF-IDF + logistic regression; C chosen on the validation split (wall time: fitting
    the vectoriser, the three fits of the C search, the final fit and the test predictions)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    from danlu.data.classification import load_classification

    data = load_classification(DATA, seed=seed)
    train, val, test = (data.splits[s] for s in ("train", "validation", "test"))
    started = time.perf_counter()
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 2), sublinear_tf=True)
    x_train = vectorizer.fit_transform(train.texts)
    best = max((accuracy_score(val.labels, LogisticRegression(C=c, max_iter=2000).fit(x_train, train.labels)
                               .predict(vectorizer.transform(val.texts))), c) for c in (1.0, 4.0, 16.0))
    model = LogisticRegression(C=best[1], max_iter=2000).fit(x_train, train.labels)
    predicted = model.predict(vectorizer.transform(test.texts))
    return {"accuracy": round(accuracy_score(test.labels, predicted), 4),
            "macro_f1": round(f1_score(test.labels, predicted, average="macro"), 4),
            "wall_seconds": round(time.perf_counter() - started, 1), "C": best[1]}


def finetune(model: str, out: Path, seed: int, args, lr: float, steps: int) -> dict:
    """danlu finetune on the seed's split; the test metrics the artifact recorded and the wall time of the
    command (start-up, training, validation and test scoring; None when a finished artifact is reused)."""
    if not (out / "danlu.json").exists():
        seconds = danlu("finetune", "--model", model, "--data", DATA, "--out", str(out), "--seed", str(seed),
                        "--max-steps", str(steps), "--batch-size", str(args.batch_size), "--lr", str(lr),
                        "--max-length", str(args.max_length), "--warmup-ratio", "0.06",
                        *(["--bf16"] if args.bf16 else []), log=out.with_suffix(".log"))
    else:
        seconds = None
    manifest = json.loads((out / "danlu.json").read_text(encoding="utf-8"))
    metrics = manifest["metrics"]
    return {"accuracy": round(metrics["test"]["accuracy"], 4), "macro_f1": round(metrics["test"]["macro_f1"], 4),
            "wall_seconds": seconds, "steps": metrics["steps"], "precision": metrics["precision"],
            "train_examples_per_second": metrics.get("train_examples_per_second")}


def summarize(runs: list[dict]) -> dict:
    out = {}
    for key in ("accuracy", "macro_f1", "wall_seconds"):
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            out[key] = {"mean": round(statistics.mean(values), 4),
                        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0}
    return out


def pretraining_curve(artifact: Path) -> list[dict]:
    entries = [json.loads(line) for line in (artifact / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{"step": e["step"], "eval_loss": round(e["eval_loss"], 4)} for e in entries if "eval_loss" in e]


def write_report(args, runs: dict[str, list[dict]], c: dict, partial: bool) -> dict:
    """Write the results JSON (atomically; `partial` while runs remain) and return the summary."""
    summary = {name: summarize(r) for name, r in runs.items() if r}
    stats = json.loads((c["corpus"] / "stats.json").read_text(encoding="utf-8"))
    manifest = c["pretrain_manifest"]
    gap = None
    if {"pretrained", "random-init"} <= set(summary):
        gap = round(100 * (summary["pretrained"]["accuracy"]["mean"] - summary["random-init"]["accuracy"]["mean"]), 2)
    report = {
        "question": "does pretraining a small BERT on People's Daily (danlu's own pipeline) pay on Chinese sentiment?",
        "partial": partial,
        "data": {"name": DATA, "split": "80/10/10 stratified, split seed = fine-tuning seed",
                 "train_examples": len(c["texts"])},
        "summary": summary,
        "pretrained_minus_random_init_accuracy_points": gap,
        "runs": runs,
        "unknown_token_rate_on_train_texts": c.setdefault("unk", {
            "peoples-daily wordpiece": unknown_rate(str(c["bert"]), c["texts"]),
            "minilm-l6": unknown_rate(c["minilm"], c["texts"])}),
        "pretraining": {
            "prepare_command": "danlu " + " ".join(c["prepare_cmd"]), "corpus_stats": stats,
            "pretrain_command": "danlu " + " ".join(c["pretrain_cmd"]), "wall_seconds": c["pretrain_seconds"],
            "parameters": manifest["metrics"].get("parameters"),
            "train_seconds": manifest["metrics"].get("train_seconds"),
            "validation_loss": manifest["metrics"].get("validation", {}).get("loss"),
            "unigram_entropy": stats.get("unigram_entropy"),
            "curve": pretraining_curve(c["bert"])},
        "fine_tuning_budget": {"steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length,
                               "bert_lr": args.bert_lr, "minilm_lr": args.minilm_lr, "bf16": args.bf16,
                               "seeds": args.seeds, "minilm_steps": args.minilm_steps,
                               "minilm_seeds": c["minilm_seeds"],
                               "tfidf_lr": "whole train split; C in {1, 4, 16} picked on validation"},
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "threads": os.environ.get("OMP_NUM_THREADS", "default"),
                    "load_1m_at_start": round(c["load_before"], 2), **c["load"].summary(),
                    "wall_seconds": round(time.perf_counter() - c["started"], 1)},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(args.out)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True,
                        help="scratch folder; finished stages in it are reused as they are (use a fresh one "
                             "for new settings)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--size", default="tiny", help="danlu pretrain --size")
    parser.add_argument("--model-config", default="", help="danlu pretrain --config (JSON overrides of --size)")
    parser.add_argument("--pretrain-steps", type=int, default=4000)
    parser.add_argument("--pretrain-batch-size", type=int, default=32)
    parser.add_argument("--pretrain-lr", type=float, default=1e-3)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=800, help="fine-tuning budget (optimizer steps), the same for "
                                                                   "the small BERTs")
    parser.add_argument("--minilm-steps", type=int, default=60, help="MiniLM's fine-tuning steps (~25x the "
                                                                       "compute of the small BERT per step)")
    parser.add_argument("--minilm-seeds", type=int, nargs="+", default=None, help="default: --seeds")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--bert-lr", type=float, default=3e-4, help="fine-tuning lr of the small BERT (both inits)")
    parser.add_argument("--minilm-lr", type=float, default=1e-4)
    parser.add_argument("--bf16", action="store_true", help="fine-tune with bf16 autocast where it is native")
    parser.add_argument("--systems", nargs="+", default=["pretrained", "random-init", "tfidf-lr", "minilm-l6"],
                        help="also: domain-adapted (the pretrained BERT's MLM continued on the seed's own "
                             "train-split review texts, --adapt-steps, then fine-tuned alike)")
    parser.add_argument("--adapt-steps", type=int, default=600, help="domain-adapted: MLM steps on the reviews")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    with LoadSampler() as load:
        corpus = work / "corpus"
        prepare_cmd = ["prepare", "peoples-daily", "--out", str(corpus), "--tokenizer", "wordpiece",
                       "--vocab-size", str(args.vocab_size), "--min-length", "20", "--seq-len", str(args.seq_len)]
        if not (corpus / "stats.json").exists():
            print("prepare ...", flush=True)
            danlu(*prepare_cmd, log=work / "prepare.log")
        bert = work / "bert"
        pretrain_cmd = ["pretrain", "--data", str(corpus), "--out", str(bert), "--objective", "mlm", "--arch", "bert",
                        "--size", args.size, "--seq-len", str(args.seq_len), "--batch-size",
                        str(args.pretrain_batch_size), "--max-steps", str(args.pretrain_steps), "--lr",
                        str(args.pretrain_lr), "--warmup-steps", str(max(1, args.pretrain_steps // 20)),
                        "--eval-every", str(max(1, args.pretrain_steps // 4)), "--eval-sequences", "256",
                        *(["--config", args.model_config] if args.model_config else [])]
        pretrain_seconds = None
        if not (bert / "danlu.json").exists():
            print("pretrain ...", flush=True)
            pretrain_seconds = danlu(*pretrain_cmd, log=work / "pretrain.log")
        pretrain_manifest = json.loads((bert / "danlu.json").read_text(encoding="utf-8"))

        from danlu.assets import install
        from danlu.data.classification import load_classification

        minilm = str(install("minilm-l6", quiet=True))
        texts = load_classification(DATA, seed=args.seeds[0]).splits["train"].texts
        runs: dict[str, list[dict]] = {name: [] for name in args.systems}
        minilm_seeds = args.minilm_seeds or args.seeds
        plan = [(seed, name) for seed in args.seeds for name in args.systems if name != "minilm-l6"]
        plan += [(seed, "minilm-l6") for seed in minilm_seeds if "minilm-l6" in args.systems]
        context = {"texts": texts, "minilm": minilm, "bert": bert, "corpus": corpus, "prepare_cmd": prepare_cmd,
                   "pretrain_cmd": pretrain_cmd, "pretrain_seconds": pretrain_seconds,
                   "pretrain_manifest": pretrain_manifest, "minilm_seeds": minilm_seeds, "started": started,
                   "load_before": load_before, "load": load}
        budget = f"lr{args.bert_lr:g}-s{args.steps}"  # fine-tunes of another budget get their own folders
        for seed, name in plan:
            print(f"seed {seed}: {name} ...", flush=True)
            if name == "tfidf-lr":
                result = tfidf_lr(seed)
            elif name == "pretrained":
                result = finetune(str(bert), work / f"ft-pretrained-{seed}-{budget}", seed, args, args.bert_lr, args.steps)
            elif name == "domain-adapted":
                adapted = domain_adapted(bert, work, seed, args)
                result = finetune(str(adapted), work / f"ft-adapted-{seed}-{budget}-a{args.adapt_steps}", seed, args,
                                  args.bert_lr, args.steps)
            elif name == "random-init":
                init = random_init_model(bert, work / f"random-init-{seed}", seed)
                result = finetune(str(init), work / f"ft-random-init-{seed}-{budget}", seed, args, args.bert_lr, args.steps)
            else:
                result = finetune(minilm, work / f"ft-minilm-{seed}-lr{args.minilm_lr:g}-s{args.minilm_steps}", seed, args, args.minilm_lr, args.minilm_steps)
            print(f"  {result}", flush=True)
            runs[name].append({"seed": seed, **result})
            summary = write_report(args, runs, context, partial=(seed, name) != plan[-1])
    print(f"{'system':<14}{'accuracy':>18}{'macro-F1':>18}{'wall s':>10}")
    for name, s in summary.items():
        print(f"{name:<14}{s['accuracy']['mean']:>10.4f} ± {s['accuracy']['std']:.4f}"
              f"{s['macro_f1']['mean']:>10.4f} ± {s['macro_f1']['std']:.4f}"
              f"{s.get('wall_seconds', {}).get('mean', 0):>10.0f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
