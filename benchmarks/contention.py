"""A busy machine: fine-tune steps/s and serve tokens/s idle and beside a CPU hog, danlu vs the HF Trainer.

Issue 19, finding 9: beside two or three other busy processes a quickstart-shaped fine-tune fell from
~2.2 to ~0.15 steps/s (0.07x): OpenMP threads spun at barriers waiting for a descheduled sibling. danlu
now waits passively (OMP_WAIT_POLICY=PASSIVE, set by its CLI before torch loads) and runs one thread per
CPU that others leave free (danlu/hardware.py `choose_threads`).

Each measurement runs in a fresh process (the OpenMP policy is read once, when the runtime loads), in
turns: for each round, for each condition (idle, then a hog: one `while True: pass` process pinned to CPU
0, started 2 s before), each system once. Systems:

- fine-tune (MiniLM-L6 on Rotten Tomatoes, the quickstart's shape: batch 32, max length 96, fp32):
  `danlu` (danlu's train loop as `danlu finetune` runs it), `hf` (the HF Trainer as people run it:
  torch's default threads, OpenMP's default wait policy), `danlu-before` (danlu's loop with the
  old behaviour: a thread per core, default wait policy);
- serve (`danlu serve smollm2-135m`, 4 clients, 32 new tokens each, greedy, for `--serve-seconds`):
  `danlu` (now) and `danlu-before` (--threads = cores, default wait policy).

Ratios: each system under the hog over its own idle speed (the fair share of a 2-core machine with one
core taken is 0.5x), and danlu over the Trainer under the hog.

    flock /tmp/danlu-cpu.lock .venv/bin/python benchmarks/contention.py [--steps 12] [--rounds 2]

Writes benchmarks/results/contention.json (with the load average, which says whether the machine was idle).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "contention.json"
FINETUNE = ["danlu", "hf", "danlu-before"]
SERVE = ["danlu", "danlu-before"]


def system_env(system: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if system == "danlu":
        env["OMP_WAIT_POLICY"] = "PASSIVE"  # what danlu's CLI sets before torch loads
    elif system == "danlu-before":
        env["OMP_NUM_THREADS"] = str(len(os.sched_getaffinity(0)))  # a thread per core, as torch's default
    return env


# ---- fine-tune: one process per measurement ---------------------------------------------------------


def finetune_worker(system: str, steps: int) -> None:
    """Run `steps` optimizer steps (after 2 warm-up steps) and print {"steps_per_second", "threads"}."""
    sys.path.insert(0, str(HERE))
    import torch
    from finetune_vs_hf import load_features, run_danlu, run_hf

    hp = {"batch": 32, "lr": 1e-4, "warmup_ratio": 0.06, "weight_decay": 0.01, "max_grad_norm": 1.0, "seed": 42}
    model_path, data, tokenizer, features, label_ids, _ = load_features(96)
    ctx = {"model_path": model_path, "data": data, "tokenizer": tokenizer, "features": features,
           "label_ids": label_ids}
    run = (lambda n: run_danlu(ctx, n, False, hp)) if system.startswith("danlu") else \
        (lambda n: run_hf(ctx, n, False, hp, grouped=False))
    warm, _ = run(2)
    seconds, _ = run(steps + 2)
    per_step = (seconds - warm) / steps  # the fixed cost of a run (model, optimizer, loader) cancels out
    print(json.dumps({"steps_per_second": 1 / per_step, "threads": torch.get_num_threads(),
                      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default")}))


def measure_finetune(system: str, steps: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--finetune-worker", system, "--steps", str(steps)],
                          capture_output=True, text=True, env=system_env(system), timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{system} fine-tune failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- serve: a server per measurement ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def drive(url: str, clients: int, seconds: float, max_tokens: int) -> tuple[int, int]:
    """Clients sending one chat request after another for `seconds`: (completion tokens, errors)."""
    import httpx

    body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Tell me about the sea."}],
            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True}
    totals = {"tokens": 0, "errors": 0}
    deadline = time.perf_counter() + seconds

    async def client(http):
        # streamed chunks (one token each) received inside the window: a slow server's unfinished
        # requests count too
        while time.perf_counter() < deadline:
            async with http.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
                if r.status_code != 200:
                    totals["errors"] += 1
                    continue
                async for line in r.aiter_lines():
                    if time.perf_counter() > deadline:
                        return
                    if line.startswith("data: {") and '"content"' in line:
                        totals["tokens"] += 1

    async with httpx.AsyncClient() as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return totals["tokens"], totals["errors"]


def measure_serve(system: str, seconds: float) -> dict:
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "danlu", "serve", "smollm2-135m", "--port", str(port)]
    env = system_env(system)
    if system == "danlu-before":
        cmd += ["--threads", env.pop("OMP_NUM_THREADS")]
        env["OMP_WAIT_POLICY"] = ""  # the CLI now sets PASSIVE only when the variable is absent
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read()[-2000:]}")
            time.sleep(0.5)
        asyncio.run(drive(url, 2, 3, 8))  # warm-up
        started = time.perf_counter()
        tokens, errors = asyncio.run(drive(url, 4, seconds, 32))
        return {"tokens_per_second": tokens / (time.perf_counter() - started), "errors": errors}
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        if proc.poll() is None:
            proc.kill()


# ---- the run ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def condition(name: str):
    if name == "idle":
        yield
        return
    hog = subprocess.Popen([sys.executable, "-c", "import os; os.sched_setaffinity(0, {0})\nwhile True: pass"])
    time.sleep(2)  # so that danlu's look at the machine sees it
    try:
        yield
    finally:
        hog.kill()
        hog.wait()


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None  # None: the denominator did nothing in its window


def ratios(runs: dict, systems: list[str], key: str) -> dict:
    med = {c: {s: statistics.median(r[key] for r in runs[c][s]) for s in systems} for c in runs}
    out = {"median": {c: {s: round(v, 3) for s, v in med[c].items()} for c in med},
           "hog_over_idle": {s: ratio(med["hog"][s], med["idle"][s]) for s in systems}}
    if "hf" in systems:
        out["danlu_over_hf_under_hog"] = ratio(med["hog"]["danlu"], med["hog"]["hf"])
        out["danlu_over_hf_idle"] = ratio(med["idle"]["danlu"], med["idle"]["hf"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve-seconds", type=float, default=20)
    parser.add_argument("--parts", nargs="+", default=["finetune", "serve"], choices=["finetune", "serve"])
    parser.add_argument("--finetune-worker", default="")
    parser.add_argument("--output", default=str(RESULTS))
    opts = parser.parse_args()
    if opts.finetune_worker:
        return finetune_worker(opts.finetune_worker, opts.steps)
    sys.path.insert(0, str(HERE))
    from finetune_vs_hf import cpu_model

    report = {"cpu": cpu_model(), "cpus": len(os.sched_getaffinity(0)), "load_average_at_start": os.getloadavg(),
              "steps": opts.steps, "rounds": opts.rounds, "serve_seconds": opts.serve_seconds,
              "hog": "one `while True: pass` process pinned to CPU 0", "finetune": {}, "serve": {}}
    fine = {c: {s: [] for s in FINETUNE} for c in ("idle", "hog")}
    serve = {c: {s: [] for s in SERVE} for c in ("idle", "hog")}
    for round_ in range(opts.rounds):
        for name in ("idle", "hog"):
            with condition(name):
                if "finetune" in opts.parts:
                    for system in FINETUNE:
                        row = {**measure_finetune(system, opts.steps), "load_average": os.getloadavg()[0]}
                        fine[name][system].append(row)
                        print(f"[round {round_ + 1} {name}] finetune {system:<13} {row['steps_per_second']:.3f} "
                              f"steps/s ({row['threads']} threads, {row['omp_wait_policy']}; load "
                              f"{row['load_average']:.1f})", flush=True)
                if "serve" in opts.parts:
                    for system in SERVE:
                        row = {**measure_serve(system, opts.serve_seconds), "load_average": os.getloadavg()[0]}
                        serve[name][system].append(row)
                        print(f"[round {round_ + 1} {name}] serve    {system:<13} {row['tokens_per_second']:.1f} "
                              f"tok/s (load {row['load_average']:.1f})", flush=True)
    if "finetune" in opts.parts:
        report["finetune"] = {"runs": fine, **ratios(fine, FINETUNE, "steps_per_second")}
        print("finetune:", json.dumps({k: v for k, v in report["finetune"].items() if k != "runs"}))
    if "serve" in opts.parts:
        report["serve"] = {"runs": serve, **ratios(serve, SERVE, "tokens_per_second")}
        print("serve:", json.dumps({k: v for k, v in report["serve"].items() if k != "runs"}))
    report["load_average_at_end"] = os.getloadavg()
    Path(opts.output).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {opts.output}")


if __name__ == "__main__":
    main()
