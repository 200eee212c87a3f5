"""The ceiling int8 can reach on this CPU: one feed-forward-sized GEMM of MiniLM-L6 at batch 32
(1920 x 384 @ 384 x 1536: 32 texts x 60 tokens) in float32 and in int8, in PyTorch (MKL/oneDNN sgemm,
FBGEMM and oneDNN dynamic int8 Linear) and ONNX Runtime (MLAS sgemm, U8S8 MatMulInteger).

Where the int8 kernel is not much faster than the fp32 one (AVX2 without VNNI: vpmaddubsw + vpmaddwd
do 32 multiply-adds in two instructions, FMA does 8 in one), no int8 recipe can make the whole model 2x
faster: the GEMMs are what it speeds up. Writes benchmarks/results/int8_gemm_ceiling.json.
    flock /tmp/danlu-cpu.lock python benchmarks/int8_gemm_ceiling.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

M, K, N = 1920, 384, 1536


def bench(f, calls: int = 30, repeats: int = 5) -> float:
    """Median seconds per call over `repeats` timings of `calls` calls (after one warm-up call)."""
    f()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            f()
        times.append((time.perf_counter() - started) / calls)
    return statistics.median(times)


def ort_session(node, initializers, x_type, y_type, threads):
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", x_type, [M, K])],
                              [helper.make_tensor_value_info("y", y_type, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "int8_gemm_ceiling.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    x, w = torch.randn(M, K), torch.randn(N, K)
    linear = torch.nn.Linear(K, N)
    linear.weight.data = w
    seconds = {}
    with torch.inference_mode():
        seconds["torch fp32 Linear"] = bench(lambda: linear(x))
        for engine in ("x86", "onednn"):
            if engine in torch.backends.quantized.supported_engines:
                torch.backends.quantized.engine = engine
                q = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear},
                                                           dtype=torch.qint8)
                seconds[f"torch dynamic int8 Linear ({engine})"] = bench(lambda: q(x))
    fp32 = ort_session(helper.make_node("MatMul", ["x", "w"], ["y"]),
                       [onnx.numpy_helper.from_array(w.numpy().T.copy(), "w")], TensorProto.FLOAT, TensorProto.FLOAT,
                       args.threads)
    xn = x.numpy()
    seconds["onnxruntime fp32 MatMul"] = bench(lambda: fp32.run(None, {"x": xn}))
    rng = np.random.default_rng(0)
    xq = rng.integers(0, 255, (M, K), dtype=np.uint8)
    int8 = ort_session(helper.make_node("MatMulInteger", ["x", "w", "x_zero"], ["y"]),
                       [onnx.numpy_helper.from_array(rng.integers(-127, 127, (K, N), dtype=np.int8), "w"),
                        onnx.numpy_helper.from_array(np.array(128, np.uint8), "x_zero")],
                       TensorProto.UINT8, TensorProto.INT32, args.threads)
    seconds["onnxruntime int8 MatMulInteger (U8S8)"] = bench(lambda: int8.run(None, {"x": xq}))
    base = seconds["torch fp32 Linear"]
    cpu = getattr(torch, "cpu", None)
    flags = {name[4:-10]: getattr(cpu, name)() for name in dir(cpu)
             if name.startswith("_is_") and name.endswith("_supported")}
    rows = {k: {"ms": 1000 * v, "gop_per_s": 2 * M * K * N / v / 1e9, "speedup_vs_torch_fp32": base / v}
            for k, v in seconds.items()}
    report = {"shape": {"m": M, "k": K, "n": N}, "threads": args.threads, "cpu_flags": flags,
              "processor": platform.processor() or platform.machine(),
              "torch": torch.__version__, "onnxruntime": ort.__version__,
              "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]}, "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for k, r in rows.items():
        print(f"{k:40s} {r['ms']:7.2f} ms {r['gop_per_s']:7.1f} GOP/s {r['speedup_vs_torch_fp32']:5.2f}x torch fp32")
    print(f"threads {args.threads}, load {load_before:.2f} -> {os.getloadavg()[0]:.2f}; wrote {args.out}")


if __name__ == "__main__":
    main()
