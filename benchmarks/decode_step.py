"""One decode step of `danlu serve`'s engine, offline: time per step and per op class, weights read per token
against the machine's measured memory bandwidth.

Runs the engine's own step functions (no HTTP, no thread) on SmolLM2-135M-Instruct with `batch` sequences
decoding together (chat prompts, greedy, EOS ignored), for each configuration in turn, interleaved over
`--rounds` rounds: transformers' forward (`hf`) and danlu's lean Llama step (`lean`), with int8 weights
(danlu's kernel) and/or float32. Then a torch.profiler trace of one step per configuration, summed by op
class (the int8 kernel shows as its Python caller, `Int8Linear` / `run_w8`, because ctypes calls are not
recorded: its time is the step's total minus the rest).

    flock /tmp/danlu-cpu.lock .venv/bin/python benchmarks/decode_step.py --batches 1 4 16 --threads 2

Writes benchmarks/results/decode_step.json (with the load average and CPU model: on a shared machine the
figures are only as good as the load says).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from finetune_vs_hf import cpu_model  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "decode_step.json"


def stream_bandwidth(mb: int = 512) -> float:
    """GB/s of reading a float32 buffer much larger than the caches (best of 5 sums)."""
    x = torch.ones(mb * 2 ** 20 // 4)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - start)
    return x.numel() * 4 / best / 1e9


def weight_bytes(model) -> int:
    """Bytes of the weights a decode step streams (every linear layer; the embedding table is only gathered)."""
    total = 0
    for module in model.modules():
        for name in ("qweight", "scale", "packed", "step", "offset", "weight", "bias"):
            t = module._buffers.get(name) if name in module._buffers else module._parameters.get(name)
            if t is not None and type(module).__name__ in ("Linear", "Int8Linear", "Int4Linear"):
                total += t.numel() * t.element_size()
    return total


def make_engine(model, tokenizer, batch: int, lean: bool):
    from danlu.serve.engine import DecoderEngine, Sequence
    from danlu.serve.sampling import SamplingParams

    engine = DecoderEngine(model, tokenizer, max_batch_size=batch, max_queue=batch, max_model_len=1024,
                           prefill_chunk=512, lean_step=lean)
    chats = ["Write a short story about a cat.", "What is the capital of France?", "Explain photosynthesis.",
             "Give me three tips for sleeping better."]
    for i in range(batch):
        text = tokenizer.apply_chat_template([{"role": "user", "content": chats[i % len(chats)]}],
                                             add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        engine.waiting.append(Sequence(ids, SamplingParams(max_tokens=10 ** 6, temperature=0, ignore_eos=True),
                                       lambda e: None, tokenizer))
    engine._admit()
    while engine.prefilling:
        engine._prefill_step()
    return engine


def time_steps(engine, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        engine._decode_step()
        times.append(time.perf_counter() - start)
    return times


def profile_step(engine) -> dict[str, float]:
    """ms per op class in one decode step (torch.profiler, CPU self time)."""
    from torch.profiler import ProfilerActivity, profile

    engine._decode_step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        engine._decode_step()
        total = time.perf_counter() - start
    classes: dict[str, float] = {}
    counts: dict[str, int] = {}
    for event in prof.key_averages():
        name = event.key
        if not name.startswith("aten::"):
            continue
        group = name.removeprefix("aten::")
        classes[group] = classes.get(group, 0) + event.self_cpu_time_total / 1e3
        counts[group] = counts.get(group, 0) + event.count
    top = dict(sorted(classes.items(), key=lambda kv: -kv[1])[:14])
    torch_ops = sum(classes.values())
    return {"step_ms_profiled": total * 1e3, "aten_ops": sum(counts.values()), "aten_ms": torch_ops,
            "rest_ms (int8 kernel via ctypes + Python)": total * 1e3 - torch_ops,
            "by_op_ms": {k: round(v, 3) for k, v in top.items()},
            "by_op_count": {k: counts[k] for k in top}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--formats", nargs="+", default=["int8", "int4"], choices=["int8", "int4", "float32"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from danlu.assets import install
    from danlu.kernels import kernel_error
    from danlu.serve.loading import load_decoder

    path = install("smollm2-135m", quiet=True)
    out = {"cpu": cpu_model(), "threads": args.threads, "loadavg_before": os.getloadavg(),
           "kernel": kernel_error() or "ready", "stream_read_GBps": round(stream_bandwidth(), 2), "results": {}}
    print(f"{out['cpu']}, load {out['loadavg_before']}, stream read {out['stream_read_GBps']} GB/s")
    for fmt in args.formats:
        model, tokenizer = load_decoder(path, torch.float32, torch.device("cpu"),
                                        quantize="none" if fmt == "float32" else fmt)
        bytes_per_step = weight_bytes(model)
        with torch.inference_mode():
            for batch in args.batches:
                engines = {name: make_engine(model, tokenizer, batch, lean) for name, lean in
                           (("hf", False), ("lean", True))}
                times = {name: [] for name in engines}
                for _ in range(args.rounds):
                    for name, engine in engines.items():
                        times[name] += time_steps(engine, args.steps)
                for name, engine in engines.items():
                    median = statistics.median(times[name])
                    key = f"{fmt}/{name}/batch{batch}"
                    out["results"][key] = {
                        "step_ms_median": round(median * 1e3, 2), "step_ms_min": round(min(times[name]) * 1e3, 2),
                        "tok_per_s": round(batch / median, 1), "weights_MB_per_step": round(bytes_per_step / 1e6, 1),
                        "weights_GBps_at_median": round(bytes_per_step / median / 1e9, 2),
                        "profile": profile_step(engine)}
                    print(key, json.dumps(out["results"][key], indent=None)[:600])
    out["loadavg_after"] = os.getloadavg()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
