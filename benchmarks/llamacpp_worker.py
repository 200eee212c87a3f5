"""Runs inside the llama.cpp benchmark venv (/work/bench-venv-llama), never in danlu's: loads one GGUF file with
llama-cpp-python and answers one JSON request read from stdin with one JSON object on stdout.

Request: {"gguf": PATH, "threads": 2, "n_ctx": 512,
          "greedy": [[token ids], ...], "new_tokens": 32,          # argmax continuations (EOS does not stop them)
          "windows": [{"ids": [token ids], "score_from": 0}, ...],  # summed next-token NLL of each window
          "tokenize": [{"text": TEXT, "special": false}, ...]}      # llama.cpp's own token ids of each TEXT
Answer: {"load_s", "greedy": [[ids]], "nll": [{"sum", "count"}], "tokens": [[ids]], "version"}.

Greedy decoding takes the argmax of the logits itself (no sampler chain), so the comparison with transformers
is over the same rule. The NLL of window w sums -log softmax(logits[i])[ids[i + 1]] for i >= score_from, in
float64, as danlu's `perplexity` and llama.cpp's `llama-perplexity` do.

    /work/bench-venv-llama/bin/python benchmarks/llamacpp_worker.py < request.json
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def window_nll(llm, ids: list[int], score_from: int) -> dict:
    """Summed next-token NLL of `ids[score_from + 1:]` given everything before, in one evaluation."""
    llm.reset()
    llm.eval(ids)
    logits = np.asarray(llm.scores[:len(ids) - 1], dtype=np.float64)[score_from:]
    targets = np.asarray(ids[score_from + 1:])
    peak = logits.max(axis=1)
    log_norm = peak + np.log(np.exp(logits - peak[:, None]).sum(axis=1))
    return {"sum": float((log_norm - logits[np.arange(len(targets)), targets]).sum()), "count": int(len(targets))}


def greedy(llm, prompt: list[int], new_tokens: int) -> list[int]:
    """`new_tokens` argmax tokens after `prompt` (the KV cache carries over between steps)."""
    llm.reset()
    llm.eval(prompt)
    out: list[int] = []
    for _ in range(new_tokens):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        llm.eval([token])
    return out


def main() -> None:
    import llama_cpp

    request = json.load(sys.stdin)
    started = time.perf_counter()
    llm = llama_cpp.Llama(model_path=request["gguf"], n_ctx=request.get("n_ctx", 512), n_batch=512,
                          n_threads=request.get("threads", 2), logits_all=True, verbose=False)
    answer: dict = {"load_s": time.perf_counter() - started, "version": llama_cpp.__version__}
    answer["greedy"] = [greedy(llm, ids, request.get("new_tokens", 32)) for ids in request.get("greedy", [])]
    answer["nll"] = [window_nll(llm, w["ids"], w.get("score_from", 0)) for w in request.get("windows", [])]
    # add_bos=True adds one only where the file says so (tokenizer.ggml.add_bos_token), as llama.cpp's tools do
    answer["tokens"] = [llm.tokenize(t["text"].encode("utf-8"), add_bos=True, special=t.get("special", False))
                        for t in request.get("tokenize", [])]
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
