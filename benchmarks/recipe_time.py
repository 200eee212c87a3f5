"""Time any recipe end to end (`danlu run RECIPE`) and keep what its stages measured.

Records the wall time of the whole recipe, the CPU, the core count, the threads (OMP_NUM_THREADS, or danlu's own
pick) and the load average before and after (a shared machine slows a run; the load says by how much), and per
stage: the manifest's metrics (finetune, pretrain) and every `eval-*.json` or `output:` file it wrote.

    flock /tmp/danlu-cpu.lock .venv/bin/python benchmarks/recipe_time.py recipes/chat-sft.yaml [--out DIR] [--threads N]

Writes benchmarks/results/recipe_<name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_vs_hf import cpu_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def stage_results(out: Path, stages: list[dict]) -> dict:
    """What each stage of the recipe wrote: its manifest metrics and its evaluation files."""
    found = {}
    for stage in stages:
        folder = out / stage["name"]
        entry: dict = {"stage": stage["stage"]}
        if (folder / "danlu.json").exists():
            manifest = json.loads((folder / "danlu.json").read_text())
            entry["metrics"] = manifest.get("metrics", {})
        output = stage.get("output")
        files = sorted(folder.glob("eval-*.json")) if folder.is_dir() else []
        if output:
            files.append(Path(output))
        for f in files:
            if f.exists():
                entry.setdefault("evaluations", {})[f.name] = json.loads(f.read_text())
        found[stage["name"]] = entry
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("--out", default="", help="the recipe's output folder (default: its own `out`)")
    parser.add_argument("--threads", type=int, default=0, help="DANLU threads for every stage (0: danlu picks)")
    parser.add_argument("--output", default="")
    opts = parser.parse_args()
    recipe = yaml.safe_load(Path(opts.recipe).read_text(encoding="utf-8"))
    out = Path(opts.out or recipe["out"])
    env = dict(os.environ)
    if opts.threads:
        env["OMP_NUM_THREADS"] = str(opts.threads)
    load_before = os.getloadavg()
    started = time.perf_counter()
    log = out.with_name(out.name + ".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as f:
        code = subprocess.run([sys.executable, "-m", "danlu", "run", opts.recipe, "--out", str(out), "--overwrite"],
                              stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    seconds = time.perf_counter() - started
    if code != 0:
        sys.exit(f"danlu run {opts.recipe} failed ({code}); see {log}:\n"
                 + "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]))
    result = {"command": f"danlu run {opts.recipe}", "wall_seconds": round(seconds, 1),
              "cpu": cpu_model(), "cores": os.cpu_count(), "omp_num_threads": env.get("OMP_NUM_THREADS", "danlu's pick"),
              "load_average_at_start": load_before, "load_average_at_end": os.getloadavg(),
              "stages": stage_results(out, recipe["stages"])}
    output = Path(opts.output or ROOT / "benchmarks" / "results" / f"recipe_{recipe['name']}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{recipe['name']}: {seconds / 60:.1f} min (load {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}); "
          f"wrote {output}")


if __name__ == "__main__":
    main()
