"""Perplexity of every weight format danlu serves beside llama.cpp's, on the same text (issue 16).

Text: danlu's held-out wiki-sample slice (`danlu.compress.decoder.heldout_text`), its first 1024 tokens (the
slice of benchmarks/smollm2_variants_perplexity.py), scored two ways, each applied to every format:

- **danlu's rule** (`danlu.compress.decoder.perplexity(max_tokens=1024, window=512)`): two non-overlapping
  windows of 512 tokens, every next token scored (2 x 511 predictions).
- **llama-perplexity's rule** (`llama-perplexity -c 512 --chunks 2`, no BOS since the file says
  add_bos_token=false): the same two windows, only the second half of each scored (tokens 257..511 of each
  window given all before them; 2 x 255 predictions).

Formats: danlu fp32, `--quantize int8` and `--quantize int4` (as `danlu serve` loads them; the int4 layers are
the packaged Q4_1 weights bit for bit) under PyTorch; under llama.cpp the packaged Q4_1 GGUF (the serve benchmark's
llama.cpp model) and danlu's own f16 / q8_0 / q4_0 GGUF exports (benchmarks/gguf_llamacpp.py makes them).
llama.cpp is measured by its own `llama-perplexity` tool (its rule) and through llama-cpp-python
(`benchmarks/llamacpp_worker.py`, both rules on danlu's token ids; its llama-perplexity rule must reproduce the
tool's figure, which checks that the two rules are implemented alike). llama.cpp's tokens of the text are
compared with transformers'.

    make bench-serve-setup
    .venv/bin/python benchmarks/gguf_perplexity.py

Writes benchmarks/results/gguf_perplexity.json (CPU model, load average).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gguf_llamacpp import DANLU_FORMATS, MODEL, PACKAGED, cpu_model, gguf_file, llama_worker  # noqa: E402
from serve_load import LLAMA_BIN  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "gguf_perplexity.json"
CONTEXT, TOKENS = 512, 1024
RULES = {"danlu": 0, "llama-perplexity": CONTEXT // 2}  # rule -> first logit row scored in each window


def windows(ids: list[int], rule: str) -> list[dict]:
    """The 512-token windows of the slice with the first scored position of `rule`."""
    return [{"ids": ids[s:s + CONTEXT], "score_from": RULES[rule]} for s in range(0, TOKENS, CONTEXT)]


@torch.inference_mode()
def torch_nll(model, window: dict) -> dict:
    """Summed next-token NLL of one window from `score_from` on (float64 log-softmax)."""
    ids, start = window["ids"], window["score_from"]
    logits = model(input_ids=torch.tensor([ids])).logits[0, start:-1].double()
    targets = torch.tensor(ids[start + 1:])
    return {"sum": float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum")), "count": len(targets)}


def ppl(parts: list[dict]) -> float:
    return math.exp(sum(p["sum"] for p in parts) / sum(p["count"] for p in parts))


def llama_perplexity_tool(gguf: Path, text_file: Path, threads: int) -> dict:
    """llama.cpp's `llama-perplexity` on the slice: its final estimate and the chunks it scored."""
    started = time.perf_counter()
    done = subprocess.run(["nice", "-n", "19", str(LLAMA_BIN / "llama-perplexity"), "-m", str(gguf), "-f",
                           str(text_file), "-c", str(CONTEXT), "-b", str(CONTEXT), "--chunks", str(TOKENS // CONTEXT),
                           "-t", str(threads)], capture_output=True, text=True)
    log = done.stdout + done.stderr
    final = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", log)
    chunks = re.search(r"computing over (\d+) chunks|calculating perplexity over (\d+) chunks", log)
    return {"rc": done.returncode, "perplexity": float(final.group(1)) if final else None,
            "plus_minus": float(final.group(2)) if final else None,
            "chunks": int(next(g for g in chunks.groups() if g)) if chunks else None,
            "seconds": time.perf_counter() - started, "log_tail": "" if final else log[-1500:]}


def danlu_rows(ids: list[int], threads: int) -> dict:
    """fp32 / int8 / int4 as `danlu serve` loads them, both rules; fp32 also through danlu's `perplexity`."""
    from transformers import AutoTokenizer

    from danlu.assets import resolve_model
    from danlu.compress.decoder import heldout_text, perplexity
    from danlu.serve.loading import load_decoder

    torch.set_num_threads(threads)
    source = resolve_model(MODEL)
    rows = {}
    for quantize, name in (("none", "danlu fp32"), ("int8", "danlu --quantize int8"),
                           ("int4", "danlu --quantize int4")):
        model = load_decoder(source, torch.float32, torch.device("cpu"), quantize)[0]
        started = time.perf_counter()
        rows[name] = {rule: ppl([torch_nll(model, w) for w in windows(ids, rule)]) for rule in RULES}
        if quantize == "none":  # the same figure by danlu's own function: the two must agree
            rows[name]["danlu perplexity()"] = perplexity(model, AutoTokenizer.from_pretrained(source),
                                                          heldout_text(), max_tokens=TOKENS, window=CONTEXT)
        rows[name]["seconds"] = time.perf_counter() - started
        print(name, rows[name], flush=True)
    return rows


def llama_rows(ids: list[int], text_file: Path, formats: list[str], threads: int) -> tuple[dict, dict]:
    """Every GGUF under llama.cpp: the tool's figure and both rules through llama-cpp-python."""
    rows, tokens = {}, {}
    for fmt in formats:
        gguf = gguf_file(fmt)
        name = f"llama.cpp {fmt.upper()} GGUF" + (" (packaged)" if fmt == PACKAGED else " (danlu export)")
        answer = llama_worker({"gguf": str(gguf), "threads": threads, "n_ctx": CONTEXT,
                               "windows": [w for rule in RULES for w in windows(ids, rule)],
                               "tokenize": [{"text": text_file.read_text(encoding="utf-8")}]})
        per_rule = len(answer["nll"]) // len(RULES)
        rows[name] = {rule: ppl(answer["nll"][i * per_rule:(i + 1) * per_rule]) for i, rule in enumerate(RULES)}
        rows[name]["llama-perplexity tool"] = llama_perplexity_tool(gguf, text_file, threads)
        rows[name]["bytes"] = gguf.stat().st_size
        tokens[fmt] = answer["tokens"][0][:TOKENS] == ids
        print(name, rows[name], flush=True)
    return rows, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", nargs="+", default=[PACKAGED, *DANLU_FORMATS], choices=[PACKAGED, *DANLU_FORMATS])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not (LLAMA_BIN / "llama-perplexity").exists():
        sys.exit(f"no {LLAMA_BIN / 'llama-perplexity'}; run make bench-serve-setup first")
    from transformers import AutoTokenizer

    from danlu.assets import resolve_model
    from danlu.compress.decoder import heldout_text

    text = heldout_text()
    ids = AutoTokenizer.from_pretrained(resolve_model(MODEL))(text).input_ids[:TOKENS]
    result = {"model": MODEL, "text": "danlu.compress.decoder.heldout_text(), first 1024 tokens",
              "context": CONTEXT, "tokens": TOKENS,
              "rules": {"danlu": "2 windows of 512, all 511 next tokens each",
                        "llama-perplexity": "2 windows of 512, tokens 257..511 of each (-c 512 --chunks 2)"},
              "threads": args.threads, "cpu_model": cpu_model(), "load_avg_before": os.getloadavg(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory() as tmp:
        text_file = Path(tmp) / "heldout.txt"
        text_file.write_text(text, encoding="utf-8")
        result["perplexity"] = danlu_rows(ids, args.threads)
        llama, same = llama_rows(ids, text_file, args.formats, args.threads)
    result["perplexity"].update(llama)
    result["llama_cpp_tokens_equal_transformers"] = same
    result["load_avg_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
