"""Serving under load: `danlu serve` vs llama.cpp (its own `llama-server` and llama-cpp-python's server) vs a naive
transformers server.

All serve SmolLM2-135M-Instruct (danlu and the naive server from the packaged model converted to
safetensors; llama.cpp from the packaged GGUF Q4_1 file it came from) through the chat endpoint with the same
chat prompts, greedy, `max_tokens` 64, streaming. For each level of concurrency (1, 4, 16, 64 clients)
each server is driven for a fixed time by that many clients that each send one request after another;
the servers take turns level by level (danlu int8, danlu, llama-server, llama-cpp-python, naive, ...) for
`--rounds` rounds. danlu runs three times: with int8 weights (`--quantize int8`, danlu's AVX2 kernel;
`danlu_int8`), with 4-bit layers (`--quantize int4`; `danlu_int4`) and with float32 weights (`danlu`).

Reported per server and level (medians over rounds): aggregate output tokens/s (streamed content chunks
received inside the window; each chunk carries one token on every server), time to first token p50/p99,
inter-token latency p50/p99; and the ratios danlu / peer of the throughput.

- llama.cpp runs from its own virtual environment (never the project's): `--setup` builds llama-cpp-python with
  the CMAKE_ARGS that work on this CPU (its default PyPI build segfaults in decode on some CPUs), and
  llama.cpp's own `llama-server` from the same sources. `make bench-serve-setup` does that.
  `llama-server` (64 parallel slots, continuous batching) is the strong peer; llama-cpp-python's server queues
  requests (`--interrupt_requests False`; its default cuts the running stream when another request arrives).
- The naive baseline (`--naive-server`, started by this script) is what people write first: FastAPI + one
  `model.generate` at a time, streamed token by token, fp32; a request whose client left is stopped.

    .venv/bin/python benchmarks/serve_load.py [--setup] [--duration 20] [--rounds 2] [--levels 1 4 16 64]

Writes benchmarks/results/serve_load.json. Run the measurement alone: `flock /tmp/danlu-cpu.lock ...`.

Between windows the script waits until the server is idle again (a drain probe: a 1-token request must
come back), because a server that serialises requests (llama-cpp-python) keeps working on requests the
clients of the last window abandoned, and would otherwise charge them to the next window. Responses other
than 200 are counted per window (`errors`), so a server that fails requests cannot look merely slow.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from fastapi import Body  # module level: FastAPI resolves the handler's annotations from module globals

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "serve_load.json"
LLAMA_VENV = Path(os.environ.get("DANLU_LLAMA_VENV", "/work/bench-venv-llama"))
LLAMA_BIN = LLAMA_VENV / "llama-server-build" / "bin"
LLAMA_SERVER = LLAMA_BIN / "llama-server"
# llama.cpp's own tools built beside the server: `llama-perplexity` for the quality table, `llama-simple` for
# greedy continuations of GGUF files (benchmarks/gguf_llamacpp.py)
LLAMA_TOOLS = ("llama-simple", "llama-perplexity", "llama-server")
# The default (native) PyPI build segfaulted in decode on the AVX-512/AMX Xeon (MACHINE-NOTES); the AVX-512 flags
# that work there make a library that dies with SIGILL on an AVX2-only CPU (seen on an AMD EPYC host). So the
# flags follow the CPU we are on.
_AVX2 = "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
_AVX512 = (" -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF"
           " -DGGML_AMX_BF16=OFF")


def llama_cmake_args() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    return _AVX2 + (_AVX512 if "avx512f" in flags else "")
TOPICS = ["the moon", "coffee", "volcanoes", "the ocean", "bicycles", "honey bees", "the printing press", "rain",
          "chess", "bread", "lighthouses", "penguins", "the violin", "glaciers", "trains", "tea", "owls", "maps",
          "clocks", "deserts", "gardens", "rivers", "bridges", "libraries", "kites", "snow", "cats", "the sun",
          "mountains", "autumn", "the piano", "forests"]


def prompts() -> list[str]:
    return [f"Write a short paragraph about {topic}." for topic in TOPICS]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_llama() -> None:
    """Build llama-cpp-python[server] into its own venv with the flags that work on this CPU, and llama.cpp's
    own `llama-server` (continuous batching over parallel slots), `llama-perplexity` and `llama-simple` from the
    llama.cpp sources in that package."""
    if not (LLAMA_VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(LLAMA_VENV)], check=True)
    env = {**os.environ, "CMAKE_ARGS": llama_cmake_args(), "CMAKE_BUILD_PARALLEL_LEVEL": "2"}
    installed = subprocess.run([str(LLAMA_VENV / "bin" / "python"), "-c", "import llama_cpp.server"],
                               capture_output=True).returncode == 0
    if not installed:
        subprocess.run(["nice", "-n", "10", str(LLAMA_VENV / "bin" / "pip"), "install", "--no-cache-dir",
                        "llama-cpp-python[server]==0.3.36"], check=True, env=env)
    if all((LLAMA_BIN / tool).exists() for tool in LLAMA_TOOLS):
        return
    import tarfile

    # the sources stay beside the build, so that an interrupted build (~40 min on 2 cores) resumes
    sources = LLAMA_VENV / "llama-cpp-python-src"
    if not any(sources.glob("llama_cpp_python-*/vendor/llama.cpp")):
        sources.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(LLAMA_VENV / "bin" / "pip"), "download", "--no-deps", "--no-binary", ":all:", "-d",
                        str(sources), "llama-cpp-python==0.3.36"], check=True)
        with tarfile.open(next(sources.glob("llama_cpp_python-*.tar.gz"))) as sdist:
            sdist.extractall(sources, filter="data")
    source = next(sources.glob("llama_cpp_python-*/vendor/llama.cpp"))
    build = LLAMA_VENV / "llama-server-build"
    subprocess.run(["cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                    *llama_cmake_args().split(), "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TESTS=OFF",
                    "-DLLAMA_BUILD_EXAMPLES=ON", "-DLLAMA_OPENSSL=OFF", "-DBUILD_SHARED_LIBS=OFF"], check=True)
    jobs = os.environ.get("LLAMA_BUILD_JOBS", "2")
    for tool in LLAMA_TOOLS:  # one at a time, smallest first: the libraries they share are compiled once
        subprocess.run(["nice", "-n", "10", "cmake", "--build", str(build), "--target", tool, "-j", jobs],
                       check=True)


# ---- the naive baseline server -------------------------------------------------------------------


def naive_server(model_path: str, port: int, threads: int) -> None:
    """One request at a time: `model.generate` streamed through TextIteratorStreamer (fp32)."""
    import threading

    import torch
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers import StoppingCriteria, StoppingCriteriaList
    from transformers.generation.streamers import BaseStreamer

    class Gone(StoppingCriteria):
        def __init__(self, event):
            self.event = event

        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)

    class TokenStreamer(BaseStreamer):
        """One text piece per generated token, handed to the request's event loop (TextIteratorStreamer waits
        for whole words, which would make this baseline's chunks carry several tokens; and blocking reads in
        the loop's thread pool starve once more requests wait than the pool has threads)."""

        def __init__(self, loop, queue):
            self.loop, self.queue, self.tokens, self.sent, self.prompt_seen = loop, queue, [], "", False

        def put(self, value):
            if not self.prompt_seen:  # generate() first hands over the prompt
                self.prompt_seen = True
                return
            self.tokens.extend(value.reshape(-1).tolist())
            text = tokenizer.decode(self.tokens, skip_special_tokens=True)
            self.loop.call_soon_threadsafe(self.queue.put_nowait, text[len(self.sent):])
            self.sent = text

        def end(self):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, None)

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(body: dict = Body(...)):  # noqa: B008 (FastAPI's way to take the raw JSON body)
        ids = tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
        streamer = TokenStreamer(asyncio.get_running_loop(), asyncio.Queue())
        gone = threading.Event()  # the client went away: stop (or never start) its generation

        def work():
            try:
                with lock, torch.inference_mode():
                    if not gone.is_set():
                        model.generate(**ids, max_new_tokens=body.get("max_tokens", 64), do_sample=False,
                                       streamer=streamer, stopping_criteria=StoppingCriteriaList([Gone(gone)]))
            finally:
                streamer.end()

        threading.Thread(target=work, daemon=True).start()

        async def events():
            try:
                while True:
                    piece = await streamer.queue.get()
                    if piece is None:
                        break
                    if piece:
                        yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': piece}}]})}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                gone.set()

        return StreamingResponse(events(), media_type="text/event-stream")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# ---- driving a server ----------------------------------------------------------------------------


async def one_client(client, url, model, texts, start_index, end_time, ttfts, itls, tokens_in_window, errors):
    import httpx

    i = start_index
    while time.perf_counter() < end_time:
        body = {"model": model, "messages": [{"role": "user", "content": texts[i % len(texts)]}],
                "max_tokens": 64, "temperature": 0, "stream": True}
        i += 1
        sent = time.perf_counter()
        last = None
        try:
            async with client.stream("POST", url, json=body) as r:
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {(await r.aread())[:200]!r}")
                    await asyncio.sleep(0.05)
                    continue
                async for line in r.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    delta = json.loads(line[6:])["choices"]
                    if not delta or not delta[0].get("delta", {}).get("content"):
                        continue
                    now = time.perf_counter()
                    if now > end_time:
                        return
                    if last is None:
                        ttfts.append(now - sent)
                    else:
                        itls.append(now - last)
                    last = now
                    tokens_in_window[0] += 1
        except httpx.HTTPError as e:
            errors.append(f"{type(e).__name__}: {e}")
            await asyncio.sleep(0.05)


async def drain(client, url: str, model: str, timeout: float = 300.0) -> float:
    """Wait until the server has finished what earlier clients abandoned: a 1-token request must come back.
    Returns the seconds it took."""
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0}
    start = time.perf_counter()
    r = await client.post(url, json=body, timeout=timeout)
    if r.status_code != 200:
        raise RuntimeError(f"drain probe: {r.status_code} {r.text[:200]}")
    return time.perf_counter() - start


async def drive(base_url: str, model: str, clients: int, duration: float) -> dict:
    import httpx

    texts = prompts()
    ttfts, itls, tokens, errors = [], [], [0], []
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        start = time.perf_counter()
        end = start + duration
        tasks = [asyncio.create_task(one_client(client, base_url + "/v1/chat/completions", model, texts, k * 7,
                                                end, ttfts, itls, tokens, errors)) for k in range(clients)]
        await asyncio.wait(tasks, timeout=duration + 5)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        drain_s = await drain(client, base_url + "/v1/chat/completions", model)
    return {"tokens_per_s": tokens[0] / duration, "tokens": tokens[0], "requests_started": len(ttfts),
            "errors": len(errors), "first_errors": errors[:3], "drain_s": round(drain_s, 2),
            "ttft_p50_s": quantile(ttfts, 0.5), "ttft_p99_s": quantile(ttfts, 0.99),
            "itl_p50_s": quantile(itls, 0.5), "itl_p99_s": quantile(itls, 0.99)}


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {process.returncode}")
        for path in ("/health", "/v1/models"):
            try:
                if httpx.get(url + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not start in {timeout} s")


DANLU = ("danlu_int8", "danlu_int4", "danlu")  # danlu serve --quantize int8 / int4, and with float weights
PEERS = ("llamaserver", "llamacpp", "naive")


def start_servers(names: list[str], threads: int, log_dir: Path) -> dict:
    from danlu.assets import asset_path, install

    model_dir = str(install("smollm2-135m", quiet=True))
    gguf = str(asset_path("smollm2-135m"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    servers = {}
    for name in names:
        port = free_port()
        if name in DANLU:
            cmd = [sys.executable, "-m", "danlu", "serve", "smollm2-135m", "--port", str(port), "--threads",
                   str(threads), "--max-batch-size", "64", "--max-queue", "1024"]
            if name != "danlu":
                cmd += ["--quantize", name.removeprefix("danlu_")]
            model = "smollm2-135m"
        elif name == "llamacpp":
            cmd = [str(LLAMA_VENV / "bin" / "python"), "-m", "llama_cpp.server", "--model", gguf, "--port", str(port),
                   "--host", "127.0.0.1", "--n_threads", str(threads), "--n_threads_batch", str(threads),
                   "--n_ctx", "4096", "--model_alias", "smollm2-135m",
                   # its default interrupts the running request when another arrives: clients then get cut
                   # streams; queueing them is how it is meant to serve several clients
                   "--interrupt_requests", "False"]
            model = "smollm2-135m"
        elif name == "llamaserver":
            # llama.cpp's own server: continuous batching over parallel slots, one per client at most
            # (context shared by the slots: 256 tokens each, the prompts + 64 new tokens need ~110)
            cmd = [str(LLAMA_SERVER), "-m", gguf, "--port", str(port), "--host", "127.0.0.1", "-t", str(threads),
                   "-tb", str(threads), "--parallel", "64", "-c", str(64 * 256), "--alias", "smollm2-135m",
                   "--log-disable"]
            model = "smollm2-135m"
        else:
            cmd = [sys.executable, __file__, "--naive-server", model_dir, "--port", str(port), "--threads",
                   str(threads)]
            model = "smollm2-135m"
        log = open(log_dir / f"{name}.log", "w")
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        servers[name] = {"process": process, "url": f"http://127.0.0.1:{port}", "model": model, "cmd": cmd}
    for name, s in servers.items():
        wait_ready(s["url"], s["process"])
        asyncio.run(drive(s["url"], s["model"], 1, 3.0))  # warm-up
    return servers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", action="store_true", help="build llama-cpp-python[server] in its own venv first")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per server and level (default 20)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; medians are reported (default 2)")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64], help="concurrent clients")
    parser.add_argument("--servers", nargs="+", default=[*DANLU, *PEERS], choices=[*DANLU, *PEERS])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of every server (default 2)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--naive-server", metavar="MODEL_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_server:
        return naive_server(args.naive_server, args.port, args.threads)
    if args.setup:
        setup_llama()
    if "llamacpp" in args.servers and not (LLAMA_VENV / "bin" / "python").exists():
        sys.exit(f"no llama.cpp venv at {LLAMA_VENV}; run with --setup (or make bench-serve-setup)")
    if "llamaserver" in args.servers and not LLAMA_SERVER.exists():
        sys.exit(f"no llama-server at {LLAMA_SERVER}; run with --setup (or make bench-serve-setup)")
    import tempfile

    log_dir = Path(tempfile.mkdtemp(prefix="serve-load-"))
    load_before = os.getloadavg()[0]
    servers = start_servers(args.servers, args.threads, log_dir)
    runs: dict[int, dict[str, list[dict]]] = {level: {name: [] for name in servers} for level in args.levels}
    try:
        for round_ in range(args.rounds):
            for level in args.levels:
                for name, s in servers.items():
                    result = asyncio.run(drive(s["url"], s["model"], level, args.duration))
                    result["load_1min"] = os.getloadavg()[0]
                    runs[level][name].append(result)
                    print(f"round {round_} clients {level:3d} {name:9s} {result['tokens_per_s']:7.1f} tok/s "
                          f"ttft p50 {fmt(result['ttft_p50_s'])} itl p50 {fmt(result['itl_p50_s'])} "
                          f"errors {result['errors']} drain {result['drain_s']} s load {result['load_1min']:.1f}",
                          flush=True)
    finally:
        for s in servers.values():
            s["process"].terminate()
        for s in servers.values():
            try:
                s["process"].wait(timeout=30)
            except subprocess.TimeoutExpired:
                s["process"].kill()
    summary = {}
    for level, by_server in runs.items():
        row = {}
        for name, results in by_server.items():
            row[name] = {key: median([r[key] for r in results]) for key in
                         ("tokens_per_s", "ttft_p50_s", "ttft_p99_s", "itl_p50_s", "itl_p99_s")}
            row[name]["runs"] = results
        for ours in DANLU:
            for peer in PEERS:
                if ours in row and peer in row and row[peer]["tokens_per_s"]:
                    # median of per-round ratios (each round measured the two back to back)
                    ratios = [d["tokens_per_s"] / p["tokens_per_s"] for d, p in
                              zip(by_server[ours], by_server[peer]) if p["tokens_per_s"]]
                    row[f"ratio_{ours}_{peer}"] = median(ratios)
        summary[str(level)] = row
    out = {"benchmark": "serve_load", "model": "SmolLM2-135M-Instruct", "endpoint": "/v1/chat/completions",
           "max_tokens": 64, "greedy": True, "duration_s_per_level": args.duration, "rounds": args.rounds,
           "threads": args.threads, "cpu_count": os.cpu_count(), "load_1min_before": load_before,
           "load_1min_after": os.getloadavg()[0],
           "servers": {name: " ".join(s["cmd"]) for name, s in servers.items()},
           "notes": {"llamaserver": "llama.cpp's own llama-server, GGUF Q4_1, 64 parallel slots (continuous batching)",
                     "llamacpp": "llama-cpp-python server, GGUF Q4_1 (serialises requests)",
                     "naive": "FastAPI + sequential model.generate with TextIteratorStreamer, fp32",
                     "danlu": "danlu serve, --dtype auto (bf16 where native, else fp32), continuous batching",
                     "danlu_int8": "danlu serve --quantize int8: weight-only int8 (per output row) on danlu's AVX2 "
                                   "kernel, float32 activations, continuous batching",
                     "danlu_int4": "danlu serve --quantize int4: the layers in 4-bit groups of 32 (Q4_1 layout), "
                                   "the output head int8, float32 activations, continuous batching"},
           "levels": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({lvl: {k: v for k, v in row.items() if k.startswith("ratio")} |
                      {n: round(row[n]["tokens_per_s"], 1) for n in servers} for lvl, row in summary.items()},
                     indent=1))
    print(f"wrote {args.out}")


def fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f}s"


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


if __name__ == "__main__":
    main()
