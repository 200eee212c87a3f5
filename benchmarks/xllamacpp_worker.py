"""Runs inside the xllamacpp venv (/work/bench-venv-xllama, `make bench-gguf-setup`), never in danlu's: loads one
GGUF file in upstream llama.cpp's server (the `xllamacpp` wheel links it into a Python module, prebuilt) and
answers one JSON request read from stdin with one JSON object on stdout.

Request: {"gguf": PATH, "threads": 2, "n_ctx": 512,
          "float32_attention": false,                          # true: f32 KV cache, no flash attention
          "greedy": [[token ids], ...], "new_tokens": 32,      # argmax continuations of each prompt
          "top_logprobs": 0,                                   # > 0: log-probabilities of each greedy position
          "tokenize": [{"text": TEXT, "special": false}, ...]}  # llama.cpp's own token ids of each TEXT
Answer: {"load_s", "version", "greedy": [[ids]], "logprobs": [[{"logprob", "top": [[id, logprob], ...]}]],
         "eos_restarts": [n per prompt], "tokens": [[ids]]}

Greedy decoding is the server's sampler at temperature 0 and top_k 1, i.e. the argmax of the logits (no penalties,
no bias). The server stops at an end-of-generation token, and its `ignore_eos` would bias those tokens to -inf,
which changes the argmax; so a continuation that ends early is resumed from the prompt plus everything generated
so far (the end token included) until it has `new_tokens` tokens, which is what transformers' greedy loop that
EOS does not stop computes. Every request is evaluated from scratch (`cache_prompt` off). The log-probabilities are
the server's `logprobs`: log-softmax over the whole vocabulary of the raw logits, before sampling.

xllamacpp's Python surface has no tokenizer call, so the prompts are tokenized through the server's own
`/tokenize` endpoint on its local address (`add_special` adds a BOS only where the file says so, as llama.cpp's
tools do; `parse_special` reads `<|im_start|>` and the like as one token).

    /work/bench-venv-xllama/bin/python benchmarks/xllamacpp_worker.py < request.json
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request


def load(gguf: str, threads: int, n_ctx: int, float32_attention: bool):
    """llama.cpp's server on `gguf`, one slot, greedy sampling by default. llama.cpp keeps the KV cache in f16 and
    its CPU flash attention rounds the queries to f16 (log-probabilities 2e-4 to 4e-3 off float32 on a tiny
    Llama); `float32_attention` keeps keys and values in f32 and turns flash attention off, so that a float32
    file gives float32 logits (5e-6 off)."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = gguf
    params.n_ctx = n_ctx
    params.n_parallel = 1
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.sampling.temp = 0.0
    params.sampling.top_k = 1
    if float32_attention:
        params.cache_type_k = params.cache_type_v = xllamacpp.ggml_type.GGML_TYPE_F32
        params.flash_attn_type = xllamacpp.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_DISABLED
    return xllamacpp.Server(params)


def tokenize(server, text: str, special: bool) -> list[int]:
    """llama.cpp's token ids of `text` from the server's `/tokenize` endpoint."""
    body = json.dumps({"content": text, "add_special": True, "parse_special": special}).encode("utf-8")
    request = urllib.request.Request(server.listening_address + "/tokenize", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.load(response)["tokens"]


def complete(server, prompt: list[int], max_tokens: int, top_logprobs: int) -> list[dict]:
    """One greedy completion of `prompt`: each generated token's id and log-probabilities, in order."""
    answer = server.handle_completions({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "top_k": 1,
                                        "logprobs": max(top_logprobs, 1), "cache_prompt": False})
    if "choices" not in answer:
        raise RuntimeError(f"llama.cpp refused the completion: {answer}")
    positions = answer["choices"][0]["logprobs"]["content"]
    if not positions or len(positions) != answer["usage"]["completion_tokens"]:
        raise RuntimeError(f"{len(positions)} log-probabilities for {answer['usage']['completion_tokens']} tokens")
    return positions


def greedy(server, prompt: list[int], new_tokens: int, top_logprobs: int) -> tuple[list[int], list[dict], int]:
    """`new_tokens` argmax tokens after `prompt`, resumed after each early end-of-generation token."""
    tokens: list[int] = []
    logprobs: list[dict] = []
    restarts = -1
    while len(tokens) < new_tokens:
        restarts += 1
        for position in complete(server, prompt + tokens, new_tokens - len(tokens), top_logprobs):
            tokens.append(position["id"])
            logprobs.append({"logprob": position["logprob"],
                             "top": [[t["id"], t["logprob"]] for t in position["top_logprobs"][:top_logprobs]]})
    return tokens, logprobs, restarts


def main() -> None:
    import xllamacpp

    request = json.load(sys.stdin)
    # llama.cpp logs to stderr; anything it might print on stdout would corrupt the one JSON answer
    answer_fd = os.dup(1)
    os.dup2(2, 1)
    started = time.perf_counter()
    server = load(request["gguf"], request.get("threads", 2), request.get("n_ctx", 512),
                  request.get("float32_attention", False))
    answer: dict = {"load_s": time.perf_counter() - started, "version": xllamacpp.__version__}
    top = request.get("top_logprobs", 0)
    decoded = [greedy(server, ids, request.get("new_tokens", 32), top) for ids in request.get("greedy", [])]
    answer["greedy"] = [tokens for tokens, _, _ in decoded]
    answer["eos_restarts"] = [restarts for _, _, restarts in decoded]
    if top:
        answer["logprobs"] = [logprobs for _, logprobs, _ in decoded]
    answer["tokens"] = [tokenize(server, t["text"], t.get("special", False)) for t in request.get("tokenize", [])]
    del server
    with os.fdopen(answer_fd, "w") as out:
        json.dump(answer, out)


if __name__ == "__main__":
    main()
