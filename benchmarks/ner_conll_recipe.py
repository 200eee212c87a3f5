"""Time `danlu run recipes/ner-conll.yaml` (minilm-l6 fine-tuned on CoNLL-2003, then tested) end to end.

Target: test entity F1 >= 0.87 (seqeval strict IOB2, micro) in under 30 minutes on a 2-core CPU.
Records the wall time, the CPU, the thread count and the load average before and after (a shared
machine slows the run; the load says by how much), and the recipe's validation and test metrics.

    flock /tmp/danlu-cpu.lock .venv/bin/python benchmarks/ner_conll_recipe.py [--out runs/ner-conll]

Writes benchmarks/results/ner_conll_recipe.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_vs_hf import cpu_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "ner_conll_recipe.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/ner-conll")
    parser.add_argument("--output", default=str(RESULTS))
    opts = parser.parse_args()
    load_before = os.getloadavg()
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "danlu", "run", str(ROOT / "recipes" / "ner-conll.yaml"),
                    "--out", opts.out], check=True)
    seconds = time.perf_counter() - started
    artifact = Path(opts.out) / "tagger"
    manifest = json.loads((artifact / "danlu.json").read_text())
    test = json.loads((artifact / "eval-test.json").read_text())
    metrics = manifest["metrics"]
    result = {
        "command": "danlu run recipes/ner-conll.yaml", "wall_seconds": round(seconds, 1),
        "target": "test f1 >= 0.87 in under 1800 s on 2 cores", "cpu": cpu_model(), "cores": os.cpu_count(),
        "load_average_at_start": load_before, "load_average_at_end": os.getloadavg(),
        "precision": metrics["precision"], "steps": metrics["steps"], "best_step": metrics["best_step"],
        "train_examples_per_second": metrics["train_examples_per_second"],
        "best_validation": metrics["best_validation"],
        "test": {k: test[k] for k in ("f1", "precision", "recall", "accuracy", "loss", "examples", "entities")},
        "test_per_type": test["per_type"],
        "recipe_args": {k: manifest["args"][k] for k in ("model", "data", "epochs", "lr", "batch_size",
                                                          "max_length", "bf16", "warmup_ratio", "seed")},
    }
    Path(opts.output).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"test F1 {test['f1']:.4f} in {seconds / 60:.1f} min (load {load_before[0]:.1f} -> "
          f"{os.getloadavg()[0]:.1f}); wrote {opts.output}")


if __name__ == "__main__":
    main()
