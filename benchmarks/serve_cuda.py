"""`danlu serve` on a CUDA GPU: greedy parity with `model.generate` under concurrency (fp32 and bf16), the
OpenAI client's features, and aggregate output tokens/s at 1, 16 and 64 streaming clients beside a naive
baseline (sequential `model.generate`, one request after another, in this process).

    python benchmarks/serve_cuda.py [--model smollm2-135m | FOLDER] [--out benchmarks/results/serve_cuda.json]
    python benchmarks/serve_cuda.py --stand-in FOLDER   # FOLDER: config.json + tokenizer files only

`--stand-in` is for a GPU machine the real weights cannot reach (SmolLM2-135M's 538 MB of fp32 weights):
the model is built from FOLDER's config and tokenizer (the same architecture and shapes), randomly
initialised, and trained for `--train-steps` steps on the committed English sample and the README, so that
its greedy continuations are not a wash of near-ties. Its *text* means nothing; the parity and the speed
are those of the architecture. The JSON says which model ran.

Parity: `--parity-prompts` concurrent /v1/completions requests with token-id prompts of mixed lengths
(slices of the corpus and random ids; greedy, `--max-tokens` each, `return_token_ids`), with a few sampled
requests in the same batches, against `model.generate(do_sample=False)` on each prompt alone, same device
and dtype. For a request that differs, the reference's gap between its two best logits at the first
differing token is recorded (a near-tie flips under any change of summation order), and the prompt is sent
again alone, to tell batch composition from the engine's own kernels.

Throughput: every client sends `--requests-per-client` streaming chat requests one after another (64 tokens
each, `ignore_eos`, so every request makes exactly 64); tokens are counted from the usage of the final
chunk; tok/s = all completion tokens / wall time from the first request to the last answer.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from serve_load import TOPICS, free_port, quantile, wait_ready

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "serve_cuda.json"
CORPUS = [ROOT / "tests" / "assets" / "en_sample.txt", ROOT / "README.md"]
NEW_TOKENS = 64  # per throughput request


# ---- the model ---------------------------------------------------------------------------------


def build_stand_in(source: Path, out: Path, steps: int, layers: int, device: torch.device) -> dict:
    """SmolLM2's architecture and tokenizer from `source`, random init, `steps` AdamW steps on CORPUS."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    from danlu.artifact import write_manifest

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(source)
    if layers:
        config.num_hidden_layers = layers
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = LlamaForCausalLM(config).to(device)
    ids = torch.tensor(tokenizer("\n\n".join(p.read_text() for p in CORPUS))["input_ids"])
    seq, batch = 256, 16
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.0)
    losses, start = [], time.perf_counter()
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - seq, (batch,)).tolist()
        x = torch.stack([ids[s:s + seq] for s in starts]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 3))
    model.to(torch.float32).save_pretrained(out)
    tokenizer.save_pretrained(out)
    generation = source / "generation_config.json"
    if generation.exists():
        (out / "generation_config.json").write_text(generation.read_text())
    info = {"architecture": "SmolLM2-135M (config and tokenizer)", "weights": "random init + brief training",
            "layers": config.num_hidden_layers, "train_steps": steps, "train_tokens_per_step": seq * batch,
            "train_corpus": [str(p.relative_to(ROOT)) for p in CORPUS], "corpus_tokens": len(ids),
            "loss_first_last": [losses[0], losses[-1]] if losses else None,
            "train_s": round(time.perf_counter() - start, 1)}
    write_manifest(out, task="causal-lm", stage="stand-in", args=info, parent=str(source))
    del model
    return info


def load_reference(model_dir: Path, dtype: torch.dtype, device: torch.device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, attn_implementation="sdpa")
    return model.to(device).eval(), AutoTokenizer.from_pretrained(str(model_dir))


def generate_alone(model, prompt: list[int], n: int, min_new: int = 0) -> list[int]:
    """Greedy tokens of `prompt` alone."""
    ids = torch.tensor([prompt], device=model.device)
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=min_new,
                             do_sample=False)
    return out[0, len(prompt):].tolist()


def top2_gaps(model, prompt: list[int], tokens: list[int]) -> list[float]:
    """The gap between the two best logits before each of `tokens` (teacher-forced, one forward pass)."""
    ids = torch.tensor([prompt + tokens], device=model.device)
    with torch.inference_mode():
        logits = model(ids).logits[0, len(prompt) - 1:].float()
    best = torch.topk(logits, 2).values
    return (best[:, 0] - best[:, 1]).tolist()


# ---- the server --------------------------------------------------------------------------------


class Server:
    """`danlu serve` in a subprocess, with its log."""

    def __init__(self, model: str, flags: list[str], log_dir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"serve-{self.port}.log"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.cmd = [sys.executable, "-m", "danlu", "serve", model, "--port", str(self.port), *flags]
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            wait_ready(self.url, self.process)
        except RuntimeError:
            print(self.log.read_text()[-3000:], file=sys.stderr)
            raise

    def banner(self) -> str:
        """The line where the server says what it loaded: dtype and device."""
        return next((line for line in self.log.read_text().splitlines() if "(decoder," in line), "")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def complete(url: str, body: dict) -> dict:
    import httpx

    r = httpx.post(url + "/v1/completions", json=body, timeout=600)
    r.raise_for_status()
    return r.json()


def parity_prompts(tokenizer, count: int, rng: random.Random) -> list[list[int]]:
    """Token-id prompts of 1..400 tokens: half slices of the training corpus, half random ids."""
    corpus = tokenizer("\n\n".join(p.read_text() for p in CORPUS))["input_ids"]
    lengths = [1, 2, 5, 17, 40, 90, 160, 300, 400][:count]
    lengths += [rng.randint(1, 400) for _ in range(count - len(lengths))]
    prompts = []
    for i, length in enumerate(lengths):
        if i % 2:
            prompts.append([rng.randrange(len(tokenizer)) for _ in range(length)])
        else:
            start = rng.randrange(len(corpus) - length)
            prompts.append(corpus[start:start + length])
    return prompts


def parity(server: Server, model, tokenizer, count: int, max_tokens: int) -> dict:
    """Greedy tokens of `count` concurrent requests (with sampled ones beside) vs `generate` alone."""
    rng = random.Random(0)
    prompts = parity_prompts(tokenizer, count, rng)
    body = {"model": "m", "max_tokens": max_tokens, "temperature": 0, "return_token_ids": True}
    noise = [{"model": "m", "prompt": rng.choice(TOPICS), "max_tokens": 2 * max_tokens, "temperature": 1.0,
              "top_p": 0.9, "seed": i} for i in range(4)]
    with concurrent.futures.ThreadPoolExecutor(count + len(noise)) as pool:
        noisy = [pool.submit(complete, server.url, b) for b in noise]
        answers = list(pool.map(lambda p: complete(server.url, {**body, "prompt": p}), prompts))
        noise_ok = all(f.result()["choices"][0]["finish_reason"] for f in noisy)
    rows = []
    for prompt, answer in zip(prompts, answers):
        got = answer["choices"][0]["token_ids"]
        want = generate_alone(model, prompt, max_tokens)
        row = {"prompt_tokens": len(prompt), "identical": got == want}
        if got != want:
            first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            alone = complete(server.url, {**body, "prompt": prompt})["choices"][0]["token_ids"]
            gaps = top2_gaps(model, prompt, want)
            row.update(first_difference=first, matching_tokens=sum(a == b for a, b in zip(got, want)),
                       reference_top2_gap=gaps[first] if first < len(gaps) else None,
                       alone_identical=alone == want, alone_equals_batched=alone == got)
        rows.append(row)
    same = sum(r["identical"] for r in rows)
    return {"requests": count, "identical": same, "agreement": same / count, "sampled_requests_ok": noise_ok,
            "max_tokens": max_tokens, "rows": rows}


def feature_checks(server: Server, tokenizer) -> dict:
    """The OpenAI client against the server: each check is True or says what it got."""
    import httpx
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    checks = {}

    def check(name, fn):
        try:
            result = fn()
            checks[name] = True if result is True else f"failed: {result!r}"[:300]
        except Exception as e:  # a failed check is reported, the others still run
            checks[name] = f"error: {type(e).__name__}: {e}"[:300]

    prompt = "The model serves"
    prompt_ids = tokenizer(prompt)["input_ids"]

    def completion():
        r = client.completions.create(model="m", prompt=prompt, max_tokens=8, temperature=0,
                                      extra_body={"ignore_eos": True, "return_token_ids": True})
        c = r.choices[0]
        ok = (r.usage.prompt_tokens == len(prompt_ids) and r.usage.completion_tokens == 8 == len(c.token_ids)
              and r.usage.total_tokens == len(prompt_ids) + 8 and c.finish_reason == "length"
              and c.text == tokenizer.decode(c.token_ids, skip_special_tokens=True))
        return ok or r.model_dump()

    def completion_stream():
        full = client.completions.create(model="m", prompt=prompt, max_tokens=8, temperature=0,
                                         extra_body={"ignore_eos": True})
        chunks = list(client.completions.create(model="m", prompt=prompt, max_tokens=8, temperature=0, stream=True,
                                                stream_options={"include_usage": True},
                                                extra_body={"ignore_eos": True}))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        ok = text == full.choices[0].text and chunks[-1].usage.completion_tokens == 8
        return ok or [text, full.choices[0].text]

    def chat(stream: bool):
        messages = [{"role": "user", "content": "Say something."}]
        full = client.chat.completions.create(model="m", messages=messages, max_tokens=10, temperature=0)
        if not stream:
            expected = len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                         return_dict=True)["input_ids"])
            return (full.usage.prompt_tokens == expected and full.choices[0].message.role == "assistant"
                    and full.usage.completion_tokens >= 1) or full.model_dump()
        chunks = list(client.chat.completions.create(model="m", messages=messages, max_tokens=10, temperature=0,
                                                     stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text == full.choices[0].message.content or [text, full.choices[0].message.content]

    def seeded_n():
        ask = lambda: client.completions.create(model="m", prompt=prompt, max_tokens=12, temperature=1.0, n=3,
                                                seed=7, extra_body={"ignore_eos": True})
        a, b = ask(), ask()
        texts = [c.text for c in a.choices]
        checks["seeded_n_distinct_choices"] = len(set(texts))  # information: a peaked model may repeat itself
        return (texts == [c.text for c in b.choices] and a.usage.completion_tokens == 36) or [texts, b.choices]

    def logprobs():
        r = client.completions.create(model="m", prompt=prompt, max_tokens=4, temperature=0, logprobs=3,
                                      extra_body={"ignore_eos": True})
        lp = r.choices[0].logprobs
        c = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                           temperature=0, logprobs=True, top_logprobs=2)
        content = c.choices[0].logprobs.content
        return (len(lp.tokens) == 4 and all(len(t) == 3 for t in lp.top_logprobs)
                and all(v <= 0 for v in lp.token_logprobs)
                and all(abs(max(t.values()) - v) < 1e-3 for t, v in zip(lp.top_logprobs, lp.token_logprobs))
                and len(content) >= 1 and len(content[0].top_logprobs) == 2) or r.model_dump()

    def stop():
        full = client.completions.create(model="m", prompt=prompt, max_tokens=16, temperature=0,
                                         extra_body={"ignore_eos": True}).choices[0].text
        cut = full.strip()[3:6] if len(full.strip()) >= 6 else None
        if not cut:
            return f"greedy text too short to pick a stop string: {full!r}"
        r = client.completions.create(model="m", prompt=prompt, max_tokens=16, temperature=0, stop=[cut],
                                      extra_body={"ignore_eos": True}).choices[0]
        return (r.finish_reason == "stop" and r.text == full[:full.index(cut)]) or [full, cut, r.text]

    def endpoints():
        health = httpx.get(server.url + "/health").json()
        models = httpx.get(server.url + "/v1/models").json()
        metrics = httpx.get(server.url + "/metrics").text
        return (health["status"] == "ok" and models["data"][0]["id"] == "m"
                and "danlu_generation_tokens_total" in metrics and "danlu_time_to_first_token_seconds" in metrics
                ) or [health, models]

    check("completion_usage_and_text", completion)
    check("completion_stream_equals_full", completion_stream)
    check("chat", lambda: chat(False))
    check("chat_stream_equals_full", lambda: chat(True))
    check("seeded_n_choices_reproducible", seeded_n)
    check("logprobs_completion_and_chat", logprobs)
    check("stop_string", stop)
    check("health_models_metrics", endpoints)
    return checks


# ---- throughput --------------------------------------------------------------------------------


async def one_client(client, url: str, first: int, requests: int, ttfts: list, itls: list, tokens: list) -> None:
    for k in range(requests):
        topic = TOPICS[(first + k) % len(TOPICS)]
        body = {"model": "m", "messages": [{"role": "user", "content": f"Write a short paragraph about {topic}."}],
                "max_tokens": NEW_TOKENS, "temperature": 0, "stream": True, "ignore_eos": True,
                "stream_options": {"include_usage": True}}
        sent, last = time.perf_counter(), None
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                now = time.perf_counter()
                if chunk["choices"]:
                    if last is None:
                        ttfts.append(now - sent)
                    else:
                        itls.append(now - last)
                    last = now
                elif chunk.get("usage"):
                    tokens.append(chunk["usage"]["completion_tokens"])


async def load(url: str, clients: int, requests: int) -> dict:
    import httpx

    ttfts, itls, tokens = [], [], []
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(one_client(client, url, k * 7, requests, ttfts, itls, tokens) for k in range(clients)))
        wall = time.perf_counter() - start
    return {"clients": clients, "requests": len(tokens), "completion_tokens": sum(tokens), "wall_s": round(wall, 2),
            "tokens_per_s": round(sum(tokens) / wall, 1), "ttft_p50_s": quantile(ttfts, 0.5),
            "ttft_p99_s": quantile(ttfts, 0.99), "itl_p50_s": quantile(itls, 0.5), "itl_p99_s": quantile(itls, 0.99)}


def throughput(server: Server, levels: list[int], requests_per_client: int) -> dict:
    asyncio.run(load(server.url, max(levels), 1))  # warm-up: every batch size's kernels once
    out = {}
    for clients in levels:
        requests = requests_per_client if clients > 1 else 2 * requests_per_client
        out[str(clients)] = result = asyncio.run(load(server.url, clients, requests))
        print(f"  {clients:3d} clients: {result['tokens_per_s']:8.1f} tok/s, ttft p50 {result['ttft_p50_s']:.3f} s, "
              f"itl p50 {result['itl_p50_s']:.4f} s", flush=True)
    return out


def naive_baseline(model, tokenizer, requests: int) -> dict:
    """One `model.generate` after another (what a server without batching does), NEW_TOKENS each."""
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": f"Write a short paragraph about {t}."}],
                                             add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
               for t in TOPICS[:requests + 1]]
    generate_alone(model, prompts[-1], 8)  # warm-up
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    start, tokens = time.perf_counter(), 0
    for prompt in prompts[:requests]:
        tokens += len(generate_alone(model, prompt, NEW_TOKENS, min_new=NEW_TOKENS))
    wall = time.perf_counter() - start
    return {"requests": requests, "completion_tokens": tokens, "wall_s": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 1)}


# ---- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="packaged model name or model folder")
    parser.add_argument("--stand-in", type=Path, help="build the model from this folder's config and tokenizer "
                                                      "(random init + brief training) instead of --model")
    parser.add_argument("--train-steps", type=int, default=120, help="stand-in training steps (default 120)")
    parser.add_argument("--layers", type=int, default=0, help="stand-in depth (0 = the config's; fewer for a "
                                                              "quick dry run on CPU)")
    parser.add_argument("--parity-prompts", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=32, help="greedy tokens per parity request")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 16, 64], help="concurrent clients")
    parser.add_argument("--requests-per-client", type=int, default=3)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and args.out.resolve() == RESULTS.resolve():
        sys.exit(f"no CUDA device: a dry run on CPU must write elsewhere than {RESULTS} (--out)")
    work = Path(tempfile.mkdtemp(prefix="serve-cuda-"))
    result = {"benchmark": "serve_cuda", "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "cuda": torch.version.cuda}
    if args.stand_in:
        model_dir = work / "stand-in"
        print(f"building the stand-in model in {model_dir} ...", flush=True)
        result["model"] = {"name": "SmolLM2-135M architecture, stand-in weights",
                           **build_stand_in(args.stand_in, model_dir, args.train_steps, args.layers, device)}
        model_arg = str(model_dir)
    else:
        from danlu.assets import resolve_model

        model_dir = resolve_model(args.model)
        result["model"] = {"name": args.model, "weights": "as packaged"}
        model_arg = args.model
    print(json.dumps(result["model"]), flush=True)

    common = ["--served-model-name", "m", "--max-batch-size", "64", "--max-queue", "1024"]
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        # bfloat16 is what --dtype auto picks on a GPU with bf16: let the server choose, and record what it chose
        flags = common + ([] if dtype is torch.bfloat16 and device.type == "cuda" else ["--dtype", dtype_name])
        print(f"[{dtype_name}] starting danlu serve {' '.join(flags)}", flush=True)
        server = Server(model_arg, flags, work)
        part = result[dtype_name] = {"server": " ".join(server.cmd[2:]), "banner": server.banner()}
        print(f"  {part['banner']}", flush=True)
        try:
            model, tokenizer = load_reference(model_dir, dtype, device)
            part["parity"] = parity(server, model, tokenizer, args.parity_prompts, args.max_tokens)
            p = part["parity"]
            print(f"  parity: {p['identical']}/{p['requests']} identical to generate alone", flush=True)
            for row in p["rows"]:
                if not row["identical"]:
                    print(f"    {row}", flush=True)
            part["checks"] = feature_checks(server, tokenizer)
            print(f"  checks: {part['checks']}", flush=True)
            part["throughput"] = throughput(server, args.levels, args.requests_per_client)
            part["naive_generate"] = naive_baseline(model, tokenizer, 2 * args.requests_per_client)
            print(f"  naive sequential generate: {part['naive_generate']['tokens_per_s']} tok/s", flush=True)
            del model
        finally:
            server.stop()
        part["server_log_tail"] = server.log.read_text()[-1500:]
    result["notes"] = ("Stand-in weights (if model.name says so): SmolLM2-135M's architecture and tokenizer, random "
                       "init, briefly trained; the real weights could not travel to the GPU machine. tok/s counts "
                       f"completion tokens ({NEW_TOKENS} per request, ignore_eos) over wall time; naive_generate is "
                       "model.generate one request after another in the same dtype, no HTTP.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
