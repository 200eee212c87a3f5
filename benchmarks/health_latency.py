"""How fast `/health` answers while `danlu serve` prepares the largest request it accepts (issue 19, finding 4).

Before the fix a 960 KB prompt list was tokenized on the event loop and `/health` took 15.7 s. Target: < 100 ms
while the largest allowed request is being prepared. The server is `danlu serve smollm2-135m` with its default
limits (1 MB body, --max-batch-size 64 + --max-queue 256 sequences, --max-model-len 2048), started fresh; two
requests are sent in turn, each while a client polls `/health` every 10 ms:

- `rejected`: 8 prompts of 120 KB (960 KB): tokenized (about 192,000 tokens), then refused with a 400
  (context_length_exceeded) — the whole request is preparation;
- `accepted`: 320 prompts of 600 words (960 KB, the most sequences the defaults admit), max_tokens 1: tokenized,
  admitted and prefilled (192,000 prompt tokens); polling (and the client) stop after --accepted-seconds, so
  these latencies cover preparation and the first part of the prefill.

Peers: none measured; this is an absolute target (llama.cpp and vLLM answer /health from the event loop too).

    flock /tmp/danlu-cpu.lock .venv/bin/python benchmarks/health_latency.py

Writes benchmarks/results/health_latency.json (CPU model and load average included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_vs_hf import cpu_model  # noqa: E402
from serving import running_server  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "health_latency.json"


def summary(latencies: list[float]) -> dict:
    """Count, median, p99 and max of `latencies` (seconds) in milliseconds."""
    if not latencies:
        return {"answers": 0}
    ordered = sorted(latencies)
    return {"answers": len(ordered), "median_ms": round(statistics.median(ordered) * 1000, 1),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
            "max_ms": round(ordered[-1] * 1000, 1)}


def poll_during(url: str, send, seconds: float) -> tuple[list[tuple[float, float]], object]:
    """Poll /health every 10 ms while `send()` runs in a thread (at most `seconds`); return
    (start time, latency) pairs and what `send` returned (None if it was still running)."""
    done, out = threading.Event(), {}

    def run():
        try:
            out["r"] = send()
        except httpx.HTTPError as e:  # the client gave up (accepted request still prefilling)
            out["r"] = repr(e)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    began, samples = time.perf_counter(), []
    with httpx.Client(timeout=30) as client:
        while not done.is_set() and time.perf_counter() - began < seconds:
            started = time.perf_counter()
            assert client.get(url + "/health").status_code == 200
            samples.append((started - began, time.perf_counter() - started))
            time.sleep(0.01)
    return samples, out.get("r")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--accepted-seconds", type=float, default=40.0)
    parser.add_argument("--output", default=str(RESULTS))
    opts = parser.parse_args()
    load_before = os.getloadavg()
    result: dict = {"command": "benchmarks/health_latency.py", "cpu": cpu_model(), "cores": os.cpu_count(),
                    "load_average_at_start": load_before, "target": "/health < 100 ms while the largest allowed "
                                                                    "request is being prepared"}
    with tempfile.TemporaryDirectory() as logs, running_server(opts.model, "--served-model-name", "m",
                                                               log_dir=Path(logs), timeout=300) as server:
        quiet, _ = poll_during(server.url, lambda: time.sleep(1.0), 1.0)
        result["idle"] = summary([lat for _, lat in quiet])

        def rejected():
            body = {"model": "m", "prompt": ["word " * 24_000] * 8, "max_tokens": 4}
            return httpx.post(server.url + "/v1/completions", json=body, timeout=300)

        samples, answer = poll_during(server.url, rejected, 300)
        result["rejected"] = {"request": "8 prompts x 24,000 words (960 KB body)",
                              "status": getattr(answer, "status_code", answer),
                              "seconds": round(samples[-1][0], 2) if samples else None,
                              **summary([lat for _, lat in samples])}

        def accepted():
            body = {"model": "m", "prompt": ["word " * 600] * 320, "max_tokens": 1}
            return httpx.post(server.url + "/v1/completions", json=body, timeout=opts.accepted_seconds)

        samples, answer = poll_during(server.url, accepted, opts.accepted_seconds)
        result["accepted"] = {"request": f"320 prompts x 600 words (960 KB body), max_tokens 1; polled for at most "
                                         f"{opts.accepted_seconds:.0f} s",
                              "status": (f"still running when polling stopped ({opts.accepted_seconds:.0f} s)"
                                         if answer is None else getattr(answer, "status_code", str(answer)[:120])),
                              **summary([lat for _, lat in samples])}
    result["load_average_at_end"] = os.getloadavg()
    Path(opts.output).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.output).write_text(json.dumps(result, indent=2) + "\n")
    for name in ("idle", "rejected", "accepted"):
        r = result[name]
        print(f"/health {name:9s} {r.get('answers', 0):5d} answers  median {r.get('median_ms')} ms  "
              f"p99 {r.get('p99_ms')} ms  max {r.get('max_ms')} ms")
    print(f"wrote {opts.output}")


if __name__ == "__main__":
    main()
