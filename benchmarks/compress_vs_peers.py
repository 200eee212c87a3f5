"""danlu's chosen compressed classifier beside plain PyTorch fp32, PyTorch dynamic int8 and Optimum's ONNX
Runtime quantized pipeline (optimum-onnx), on the same token ids, in the same run.

    python benchmarks/compress_vs_peers.py --setup                    # once: the peer venv (see below)
    flock /tmp/danlu-cpu.lock python benchmarks/compress_vs_peers.py \
        --artifact /work/artifacts/quickstart/classifier --variant OUT/chosen

optimum-onnx pins transformers 4.57, which danlu (transformers 5) cannot share a venv with: its part runs
in a separate venv (--peer-python, made by --setup) as a worker process. Every contestant is a worker
process that loads its model once and then, when asked, scores the test split or times a pass; the
rounds interleave the contestants (A B C D, A B C D, ...) and the figures are medians over rounds.
Results: benchmarks/results/compress_vs_peers.json (ratios are to plain PyTorch fp32).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEER_VENV = Path(os.environ.get("DANLU_OPTIMUM_VENV", "/work/bench-venv-optimum"))


# ---- the worker (runs in either venv; imports only what its kind needs) -----------------------------


def _load(kind: str, path: str, work: str, threads: int):
    import torch

    torch.set_num_threads(threads)
    if kind == "danlu":
        from danlu.runtime import load as load_classifier

        return load_classifier(path, device="cpu").model
    if kind in ("torch-fp32", "torch-int8-dynamic"):
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        if kind == "torch-int8-dynamic":  # what the PyTorch docs show: default engine, default qconfig
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        return model
    if kind == "optimum-int8":
        from optimum.onnxruntime import ORTModelForSequenceClassification, ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig

        exported = Path(work) / "optimum-export"
        quantized = Path(work) / "optimum-int8"
        ORTModelForSequenceClassification.from_pretrained(path, export=True).save_pretrained(exported)
        quantizer = ORTQuantizer.from_pretrained(exported)
        quantizer.quantize(save_dir=quantized,
                           quantization_config=AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True))
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        return ORTModelForSequenceClassification.from_pretrained(quantized, session_options=options)
    raise ValueError(kind)


def _size(kind: str, path: str, work: str) -> float | None:
    folder = Path(work) / "optimum-int8" if kind == "optimum-int8" else Path(path)
    if kind == "torch-int8-dynamic":
        return None  # exists only in memory (PyTorch's quantized modules have no safetensors form)
    return sum(p.stat().st_size for pattern in ("*.safetensors", "*.onnx") for p in folder.glob(pattern)) / 1e6


def worker(kind: str, spec_path: str) -> None:
    import torch

    spec = json.loads(Path(spec_path).read_text())
    model = _load(kind, spec["path"], spec["work"], spec["threads"])

    def tensors(batch):
        return {k: torch.tensor(v) for k, v in batch.items()}

    def run(batch):
        return model(**tensors(batch)).logits

    with torch.inference_mode():
        for batch in spec["single"][:2] + spec["batches"][:1]:
            run(batch)
        print(json.dumps({"ready": True, "size_mb": _size(kind, spec["path"], spec["work"])}), flush=True)
        for line in sys.stdin:
            command = json.loads(line)
            if command["cmd"] == "accuracy":
                correct = total = 0
                for batch, gold in zip(spec["eval_batches"], spec["eval_labels"]):
                    predicted = torch.as_tensor(run(batch)).argmax(-1).tolist()
                    correct += sum(int(p == g) for p, g in zip(predicted, gold))
                    total += len(gold)
                reply = {"accuracy": correct / total}
            elif command["cmd"] == "time":
                started = time.perf_counter()
                for batch in spec["single"]:
                    run(batch)
                latency = 1000 * (time.perf_counter() - started) / len(spec["single"])
                started = time.perf_counter()
                for batch in spec["batches"]:
                    run(batch)
                throughput = sum(len(b["input_ids"]) for b in spec["batches"]) / (time.perf_counter() - started)
                reply = {"latency_ms": latency, "throughput": throughput}
            else:
                return
            print(json.dumps(reply), flush=True)


# ---- the driver -------------------------------------------------------------------------------------------


def inputs(artifact: Path, latency_samples: int, throughput_batches: int, seed: int) -> dict:
    """Token ids of the test split (the artifact's own split), padded batches, shared by every contestant."""
    import random

    from danlu.artifact import read_manifest
    from danlu.data.classification import load_classification
    from danlu.runtime import load as load_classifier
    from danlu.tasks.classify import encode, pad

    manifest = read_manifest(artifact)
    saved = manifest["args"]
    data = load_classification(manifest["data"]["source"], saved.get("text_column", "text"),
                               saved.get("label_column", "label"), saved.get("seed", 42),
                               saved.get("val_ratio", 0.1), saved.get("test_ratio", 0.1))
    clf = load_classifier(str(artifact), device="cpu")
    test = data.splits["test"]
    pad_id = clf.tokenizer.pad_token_id or 0
    as_lists = lambda batch: {k: v.tolist() for k, v in batch.items()}  # noqa: E731
    rng = random.Random(seed)
    features = encode(clf.tokenizer, test.texts, clf.max_length)
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    eval_batches = [order[i:i + 64] for i in range(0, len(order), 64)]
    pool = [features[rng.randrange(len(features))] for _ in range(32 * throughput_batches)]
    return {
        "single": [as_lists(pad([f], pad_id)) for f in rng.sample(features, latency_samples)],
        "batches": [as_lists(pad(pool[i:i + 32], pad_id)) for i in range(0, len(pool), 32)],
        "eval_batches": [as_lists(pad([features[i] for i in ids], pad_id)) for ids in eval_batches],
        "eval_labels": [[clf.labels.index(test.labels[i]) for i in ids] for ids in eval_batches],
    }


class Contestant:
    def __init__(self, name: str, kind: str, python: str, path: Path, spec: dict, work: Path, threads: int):
        self.name = name
        spec_path = work / f"{name}.json"
        spec_path.write_text(json.dumps({**spec, "path": str(path), "work": str(work / name), "threads": threads}))
        (work / name).mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen([python, __file__, "--worker", kind, str(spec_path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=open(work / f"{name}.log", "w"), text=True, env=env)
        self.info = self._reply()

    def _reply(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.name} worker died; see its log")
            if line.startswith("{"):
                return json.loads(line)

    def ask(self, cmd: str) -> dict:
        self.proc.stdin.write(json.dumps({"cmd": cmd}) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self) -> None:
        self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def setup(venv: Path) -> None:
    """The peer venv: torch pinned first (else pip pulls a CUDA build), then optimum-onnx with its transformers."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + ["optimum-onnx", "onnxruntime"], check=True)
    print(subprocess.run([str(python), "-c", "import optimum.onnxruntime, transformers; print('optimum-onnx ready, "
                          "transformers', transformers.__version__)"], capture_output=True, text=True).stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", default="/work/artifacts/quickstart/classifier", help="the fp32 classifier")
    parser.add_argument("--variant", default="", help="danlu's chosen variant (e.g. COMPRESS_OUT/chosen)")
    parser.add_argument("--peer-python", default=str(PEER_VENV / "bin" / "python"), help="python of the optimum venv")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency-samples", type=int, default=32)
    parser.add_argument("--throughput-batches", type=int, default=4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=str(HERE / "results" / "compress_vs_peers.json"))
    parser.add_argument("--setup", action="store_true", help=f"create the optimum venv ({PEER_VENV}) and exit")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker)
    if args.setup:
        return setup(PEER_VENV)
    import tempfile

    artifact = Path(args.artifact)
    variant = Path(args.variant).resolve() if args.variant else None
    spec = inputs(artifact, args.latency_samples, args.throughput_batches, args.seed)
    work = Path(tempfile.mkdtemp(prefix="compress-vs-peers-"))
    plan = [("torch-fp32", "torch-fp32", sys.executable, artifact),
            ("torch-int8-dynamic", "torch-int8-dynamic", sys.executable, artifact)]
    if variant:
        plan.insert(0, (f"danlu:{variant.name}", "danlu", sys.executable, variant))
    if Path(args.peer_python).exists():
        plan.append(("optimum-onnx-int8", "optimum-int8", args.peer_python, artifact))
    else:
        print(f"no {args.peer_python}: run --setup first; optimum is left out", file=sys.stderr)
    load_before = os.getloadavg()[0]
    contestants = [Contestant(name, kind, python, path, spec, work, args.threads) for name, kind, python, path in plan]
    results = {c.name: {"size_mb": c.info.get("size_mb"), "accuracy": c.ask("accuracy")["accuracy"],
                        "latency_ms_runs": [], "throughput_runs": []} for c in contestants}
    for _ in range(args.rounds):  # A B C D, A B C D, ...
        for c in contestants:
            time.sleep(0.5)  # let the previous worker's spinning threads go quiet
            timing = c.ask("time")
            results[c.name]["latency_ms_runs"].append(timing["latency_ms"])
            results[c.name]["throughput_runs"].append(timing["throughput"])
    for c in contestants:
        c.close()
    base = results["torch-fp32"]
    for name, r in results.items():
        r["latency_ms"] = statistics.median(r["latency_ms_runs"])
        r["throughput"] = statistics.median(r["throughput_runs"])
    for name, r in results.items():
        r["latency_speedup_vs_torch_fp32"] = base["latency_ms"] / r["latency_ms"]
        r["throughput_speedup_vs_torch_fp32"] = r["throughput"] / base["throughput"]
        r["accuracy_drop_points_vs_torch_fp32"] = 100 * (base["accuracy"] - r["accuracy"])
        r["size_ratio_vs_torch_fp32"] = r["size_mb"] / base["size_mb"] if r["size_mb"] else None
    report = {"artifact": str(artifact), "variant": str(variant) if variant else None, "threads": args.threads,
              "rounds": args.rounds, "latency_samples": args.latency_samples,
              "throughput_batch_size": 32, "throughput_batches": args.throughput_batches,
              "test_examples": sum(len(b) for b in spec["eval_labels"]),
              "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
              "cpu_count": os.cpu_count(), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'contestant':<28}{'accuracy':>9}{'lat b1 ms':>11}{'x fp32':>8}{'seq/s b32':>11}{'x fp32':>8}{'MB':>8}")
    for name, r in results.items():
        size = f"{r['size_mb']:.1f}" if r["size_mb"] else "-"
        print(f"{name:<28}{r['accuracy']:>9.4f}{r['latency_ms']:>11.2f}{r['latency_speedup_vs_torch_fp32']:>7.2f}x"
              f"{r['throughput']:>11.1f}{r['throughput_speedup_vs_torch_fp32']:>7.2f}x{size:>8}")
    print(f"threads {args.threads}, load average {load_before:.2f} -> {os.getloadavg()[0]:.2f}; wrote {args.out}")


if __name__ == "__main__":
    main()
