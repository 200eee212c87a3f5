"""danlu's weight-only int8 linear kernel (danlu/kernels/w8_linear.cpp) against the CPU peers on the same
inputs: float32 MKL as PyTorch calls it (`F.linear`) and transposed (`W @ x.T`, what danlu's float32 decode
uses), and PyTorch's own weight-only int8 CPU kernel (`torch._weight_int8pack_mm`, what torchao's
Int8WeightOnly runs on CPU).

Shapes are SmolLM2-135M's (the attention, MLP and output-head layers), for 1, 16, 64 and 256 activation
rows (decode steps of 1/16/64 sequences; a prefill chunk). Each timed call walks a stack of distinct
weights much larger than the caches, so weights stream from memory as they do in a real decode step.
Writes benchmarks/results/int8_linear_kernel.json and prints danlu's speed-up over each peer.

    flock /tmp/danlu-cpu.lock .venv/bin/python benchmarks/int8_linear_kernel.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from danlu.kernels import kernel_error, w8_linear
from danlu.kernels.int8 import quantize_rows

SHAPES = {"q_proj/o_proj 576x576": (576, 576), "gate/up_proj 1536x576": (1536, 576),
          "down_proj 576x1536": (576, 1536), "lm_head 49152x576": (49152, 576)}
ROWS = (1, 16, 64, 256)
STREAM_BYTES = 400e6  # float32 bytes per stack: far above any cache


def median_seconds(f, repeats: int) -> float:
    f()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        f()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "int8_linear_kernel.json")
    args = parser.parse_args()
    if kernel_error():
        raise SystemExit(f"danlu's int8 kernel is unavailable here: {kernel_error()}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows_out = []
    for label, (n, k) in SHAPES.items():
        count = max(1, int(STREAM_BYTES // (n * k * 4)))
        weights = [torch.randn(n, k) * 0.02 for _ in range(count)]
        quantized = [quantize_rows(w) for w in weights]
        packed = [(q, s) for q, s in quantized]  # _weight_int8pack_mm takes the same int8 rows and scales
        for rows in ROWS:
            x = torch.randn(rows, k)
            flops = 2 * n * k * rows * count
            with torch.inference_mode():
                timings = {
                    "danlu_int8": median_seconds(lambda: [w8_linear(x, q, s, None) for q, s in quantized], args.repeats),
                    "torch_fp32_linear": median_seconds(lambda: [F.linear(x, w) for w in weights], args.repeats),
                    "torch_fp32_transposed": median_seconds(lambda: [w @ x.T for w in weights], args.repeats),
                    "torch_int8pack_mm": median_seconds(
                        lambda: [torch._weight_int8pack_mm(x, q, s) for q, s in packed], args.repeats),
                }
            error = (w8_linear(x, *quantized[0], None) - x @ (quantized[0][0].float() * quantized[0][1][:, None]).T)
            row = {"shape": label, "rows": rows, "layers_per_call": count,
                   "ms_per_layer": {name: t / count * 1e3 for name, t in timings.items()},
                   "gflops": {name: flops / t / 1e9 for name, t in timings.items()},
                   "max_abs_error_vs_dequantized_fp32": float(error.abs().max())}
            row["danlu_speedup"] = {peer: timings[peer] / timings["danlu_int8"] for peer in timings if peer != "danlu_int8"}
            rows_out.append(row)
            print(f"{label:24s} rows {rows:4d}  danlu int8 {row['ms_per_layer']['danlu_int8']:8.3f} ms  "
                  + "  ".join(f"x{v:.2f} vs {peer}" for peer, v in row["danlu_speedup"].items()), flush=True)
    out = {"benchmark": "int8_linear_kernel", "threads": args.threads, "cpu": platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count(), "load_1min": os.getloadavg()[0], "torch": torch.__version__,
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "results": rows_out}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
