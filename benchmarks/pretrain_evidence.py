"""Evidence for issue 3: pretrain a tiny BERT (mlm+nsp) and a tiny Llama (clm) on the packaged Wikipedia
sample and compare their validation losses with the corpus's unigram baseline.

Runs `danlu prepare` once, then both `danlu pretrain` runs (side by side with one thread each, or one after
the other), and writes benchmarks/results/pretrain_evidence/wiki_sample.json from the artifacts' own
danlu.json files, plus each artifact's curve.png. Nothing in the JSON is typed by hand.

    .venv/bin/python benchmarks/pretrain_evidence.py --work /tmp/evidence
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "pretrain_evidence"


def danlu(*args: str) -> list[str]:
    return [sys.executable, "-m", "danlu", *args]


def runs(work: Path, bert_steps: int, llama_steps: int) -> dict[str, list[str]]:
    data = str(work / "wiki-4k")
    common = ["--data", data, "--size", "tiny", "--seq-len", "128", "--batch-size", "16", "--lr", "1e-3",
              "--warmup-steps", "200", "--eval-every", "500", "--eval-sequences", "1024", "--save-every", "1000"]
    return {
        "bert-mlm-nsp": danlu("pretrain", *common, "--out", str(work / "bert-mlm-nsp"), "--objective", "mlm+nsp",
                              "--arch", "bert", "--max-steps", str(bert_steps)),
        "llama-clm": danlu("pretrain", *common, "--out", str(work / "llama-clm"), "--objective", "clm",
                           "--arch", "llama", "--max-steps", str(llama_steps)),
    }


def nsp_balance(data: Path) -> dict:
    """How many validation pairs the NSP accuracy is measured on, and the share of random ones (so that
    the accuracy can be read against the majority-class rate)."""
    from danlu.pretrain.data import load_prepared
    from danlu.pretrain.run import build_objective

    objective = build_objective("mlm+nsp", load_prepared(data), "validation", 128, 0.15, 42)
    objective.set_epoch(0)
    labels = objective.collate(list(range(len(objective))))["next_sentence_label"]
    return {"pairs": len(labels), "random_next_share": round(float(labels.float().mean()), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for the corpus and artifacts")
    parser.add_argument("--bert-steps", type=int, default=5000)
    parser.add_argument("--llama-steps", type=int, default=3000)
    parser.add_argument("--sequential", action="store_true",
                        help="run the two pretraining runs one after the other with all threads "
                             "(default: side by side, one thread each)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    prepare = danlu("prepare", "wiki-sample", "--out", str(args.work / "wiki-4k"), "--vocab-size", "4096",
                    "--val-ratio", "0.1", "--seq-len", "128")
    if not (args.work / "wiki-4k" / "stats.json").exists():
        subprocess.run(prepare, check=True)
    stats = json.loads((args.work / "wiki-4k" / "stats.json").read_text())

    commands = runs(args.work, args.bert_steps, args.llama_steps)
    todo = {name: cmd for name, cmd in commands.items() if not (args.work / name / "danlu.json").exists()}
    env = dict(os.environ)
    if not args.sequential:
        env["OMP_NUM_THREADS"] = "1"
    started = time.time()
    loads = [os.getloadavg()[0]]
    if args.sequential:
        for cmd in todo.values():
            subprocess.run(cmd, check=True, env=env)
    else:
        procs = {name: subprocess.Popen(cmd, env=env) for name, cmd in todo.items()}
        while any(p.poll() is None for p in procs.values()):
            time.sleep(30)
            loads.append(os.getloadavg()[0])
        failed = [name for name, p in procs.items() if p.returncode != 0]
        if failed:
            sys.exit(f"pretraining failed: {failed}")

    RESULTS.mkdir(parents=True, exist_ok=True)
    out: dict = {
        "validation_nsp_pairs": nsp_balance(args.work / "wiki-4k"),
        "prepare": {"command": " ".join(["danlu", *prepare[3:]]), "stats": stats},
        "machine": {"cpus": os.cpu_count(), "threads_per_run": "all" if args.sequential else 1,
                    "side_by_side": not args.sequential, "precision": "fp32",
                    "runs_made_now": sorted(todo), "runs_reused_from_work_dir": sorted(set(commands) - set(todo)),
                    "load_average_1m_while_running": {"min": min(loads), "max": max(loads)} if todo else None,
                    "wall_seconds": round(time.time() - started, 1) if todo else None,
                    "note": "each run's own training time is metrics.train_seconds"},
        "runs": {},
    }
    for name, cmd in commands.items():
        artifact = args.work / name
        manifest = json.loads((artifact / "danlu.json").read_text())
        curve = [json.loads(line) for line in (artifact / "metrics.jsonl").read_text().splitlines() if line.strip()]
        out["runs"][name] = {
            "command": " ".join(["danlu", *cmd[3:]]),
            "metrics": manifest["metrics"],
            "validation_curve": [{k: v for k, v in e.items() if k == "step" or k.startswith("eval_")}
                                 for e in curve if "eval_loss" in e],
            "versions": manifest.get("versions"),
        }
        shutil.copy(artifact / "curve.png", RESULTS / f"{name}-curve.png")
        val = manifest["metrics"]["validation"]
        line = f"{name}: validation loss {val['loss']:.3f} vs unigram entropy {stats['unigram_entropy']:.3f}"
        if "nsp_accuracy" in val:
            line += f", NSP accuracy {val['nsp_accuracy']:.3f}"
        print(line)
    (RESULTS / "wiki_sample.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULTS / 'wiki_sample.json'}")


if __name__ == "__main__":
    main()
