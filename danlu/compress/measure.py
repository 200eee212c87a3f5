"""Measure one variant of an encoder task model: its task's metrics on the test split (the primary one is
the row's `quality`), latency at batch 1, throughput at batch 32, size on disk and peak memory.

Each variant is measured in a fresh Python process (`python -m danlu.compress.measure SPEC.json`):
peak memory is then that process's own high-water mark, one variant's allocator caches and thread
pools do not flatter or burden the next, and a crash inside a runtime (a segfault in a kernel) costs
only that variant's row.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

WEIGHT_FILES = ("*.safetensors", "*.onnx", "*.onnx.data", "*.onnx_data")


def size_on_disk(folder: Path) -> int:
    """Bytes of the weight files actually written (safetensors / ONNX), not tokenizer or reports."""
    return sum(p.stat().st_size for pattern in WEIGHT_FILES for p in Path(folder).glob(pattern))


def measure_in_subprocess(folder: Path, task: str, data: dict, work: Path, *, threads: int,
                          repeats: int, latency_samples: int, throughput_batches: int, seed: int,
                          timeout: float = 3600) -> dict:
    """Run `measure` on `folder` in a child process; raise RuntimeError with its stderr if it fails.

    `data` is the DataSpec (as a dict) whose test split is scored; the child reads it again."""
    work.mkdir(parents=True, exist_ok=True)
    spec = work / "spec.json"
    result = work / "result.json"
    result.unlink(missing_ok=True)
    spec.write_text(json.dumps({"folder": str(folder), "task": task, "data": data, "threads": threads,
                                "repeats": repeats, "latency_samples": latency_samples,
                                "throughput_batches": throughput_batches, "seed": seed, "out": str(result)}))
    proc = subprocess.run([sys.executable, "-m", "danlu.compress.measure", str(spec)], capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0 or not result.exists():
        (work / "measure.log").write_text(proc.stderr)
        tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:] or [f"exit {proc.returncode}"]
        raise RuntimeError(f"measuring failed (exit {proc.returncode}): {tail[0]} (log: {work / 'measure.log'})")
    row = json.loads(result.read_text())
    shutil.rmtree(work, ignore_errors=True)  # kept only when something went wrong
    return row


def measure(folder: str, task_name: str, data: dict, threads: int = 0, repeats: int = 5,
            latency_samples: int = 32, throughput_batches: int = 4, seed: int = 42) -> dict:
    """The row of the compression table for one variant (in this process)."""
    import psutil
    import torch

    from danlu.compress.training import MODEL_INPUTS
    from danlu.runtime import load
    from danlu.tasks import get_task, task_options
    from danlu.tasks.base import DataSpec

    if threads:
        torch.set_num_threads(threads)
    task = get_task(task_name)
    test = list(task.load_data(DataSpec(**data)).splits["test"])
    baseline = psutil.Process().memory_info().rss
    started = time.perf_counter()
    loaded = load(folder, device="cpu", task=task_name)
    load_seconds = time.perf_counter() - started
    options = task_options(task, loaded.manifest.args)
    metrics = task.score(loaded.model, loaded.tokenizer, test, loaded.labels, loaded.max_length, **options)
    rng = random.Random(seed)

    def batches_of(examples: list, size: int) -> list[dict]:
        objective, lengths = task.make_objective(loaded.tokenizer, examples, loaded.labels, loaded.max_length,
                                                 **options)
        return [{k: v for k, v in objective.collate(list(range(i, min(i + size, len(lengths))))).items()
                 if k in MODEL_INPUTS} for i in range(0, len(lengths), size)]

    single = batches_of(rng.sample(test, min(latency_samples, len(test))), 1)
    pool = [test[rng.randrange(len(test))] for _ in range(32 * throughput_batches)]
    batches = batches_of(pool, 32)
    items = sum(len(b["input_ids"]) for b in batches)
    model = loaded.model
    with torch.inference_mode():
        for batch in single[:2] + batches[:1]:  # warm-up: first-call allocations and kernel selection
            model(**batch)
        latencies, throughputs = [], []
        for _ in range(repeats):
            times = []
            for batch in single:
                t = time.perf_counter()
                model(**batch)
                times.append(time.perf_counter() - t)
            latencies.append(1000 * statistics.mean(times))
            t = time.perf_counter()
            for batch in batches:
                model(**batch)
            throughputs.append(items / (time.perf_counter() - t))
    peak = peak_rss_bytes()
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {
        **scalars,
        "quality": metrics[task.PRIMARY_METRIC],
        "latency_ms": statistics.median(latencies),
        "throughput": statistics.median(throughputs),
        "latency_runs_ms": latencies,
        "throughput_runs": throughputs,
        "size_mb": size_on_disk(Path(folder)) / 1e6,
        "peak_memory_mb": peak / 1e6,
        "model_memory_mb": max(0, peak - baseline) / 1e6,
        "load_seconds": load_seconds,
        "threads": torch.get_num_threads(),
        "parameters": stored_parameters(Path(folder)),
    }


def peak_rss_bytes() -> int:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a
    child started from a large parent would report the parent's size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def stored_parameters(folder: Path) -> int | None:
    """Numbers stored in model.safetensors (shared tensors once, quantization scales left out)."""
    from safetensors import safe_open

    path = folder / "model.safetensors"
    if not path.exists():
        return None
    total = 0
    with safe_open(str(path), "pt") as f:
        for key in f.keys():
            if not key.endswith(".weight_scale"):
                shape = f.get_slice(key).get_shape()
                n = 1
                for d in shape:
                    n *= d
                total += n
    return total


def _main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    row = measure(spec["folder"], spec["task"], spec["data"], spec["threads"], spec["repeats"],
                  spec["latency_samples"], spec["throughput_batches"], spec["seed"])
    Path(spec["out"]).write_text(json.dumps(row))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _main(sys.argv[1])
