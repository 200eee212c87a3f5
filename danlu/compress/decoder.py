"""Decoder (causal LM) variants: bf16 and torchao weight-only int8 / int4, with perplexity on held-out
text and generation speed (new tokens/s at batch 1 and 16).

Weight-only quantization suits decoding: at batch 1 each new token streams every weight once, so fewer
bytes per weight is what speeds it up (compute is idle). The variant artifacts store the weights
quantized in safetensors (int8 per channel; int4 packed two per byte with a scale and zero point per
group of 32), and `load_decoder_variant` rebuilds the quantized modules on load, so a server can run
the chosen one: `model = load_decoder_variant(path, device)`. On CPU, int8 runs on danlu's own AVX2
kernel (danlu/kernels), int4 and CUDA on torchao's.
"""

from __future__ import annotations

import bz2
import html
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from danlu.artifact import atomic_dir, atomic_write_text, claim_dir, read_manifest, update_metrics, write_manifest
from danlu.runtime.variants import (INT4_GROUP, _quantizable, apply_torchao, dequantized_state,  # noqa: F401
                                    load_decoder_variant)

DECODER_METHODS = ("bf16", "int8-weight-only", "int4-weight-only")


# ---- storage ------------------------------------------------------------------------------------------


def quantized_state(model: torch.nn.Module, bits: int) -> dict[str, torch.Tensor]:
    """State dict with the block Linears' weights as int8 per channel, or int4 per group (packed)."""
    names = set(_quantizable(model))
    state = {}
    tied = getattr(model.config, "tie_word_embeddings", False)
    for key, value in model.state_dict().items():
        module, _, leaf = key.rpartition(".")
        if tied and key == "lm_head.weight":
            continue  # the same tensor as the input embeddings; re-tied on load
        if leaf != "weight" or module not in names:
            state[key] = value.detach().contiguous()
            continue
        w = value.detach().float()
        if bits == 8:
            scale = (w.abs().amax(1) / 127).clamp_min(1e-12)
            state[module + ".qweight"] = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
            state[module + ".scale"] = scale
        else:  # asymmetric 4-bit per group of INT4_GROUP inputs: w ~= (q - zero) * scale, q in 0..15
            groups = w.view(w.shape[0], -1, INT4_GROUP)
            low, high = groups.amin(-1), groups.amax(-1)
            scale = ((high - low) / 15).clamp_min(1e-12)
            zero = torch.round(-low / scale).clamp(0, 15)
            q = torch.round(groups / scale[..., None] + zero[..., None]).clamp(0, 15).to(torch.uint8)
            q = q.view(w.shape[0], -1)
            state[module + ".qweight4"] = (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()  # two per byte
            state[module + ".scale"], state[module + ".zero"] = scale.contiguous(), zero.contiguous()
    return state


def write_decoder_variant(parent: Path, out: Path, method: str) -> Path:
    """Write a bf16 / int8-weight-only / int4-weight-only variant of `parent` into `out`."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(parent), dtype=torch.float32).eval()
    manifest = read_manifest(parent)
    with atomic_dir(out, overwrite=True) as tmp:  # inside OUT/variants, danlu's own
        if method == "bf16":
            model.to(torch.bfloat16).save_pretrained(str(tmp))
            load = {}
        else:
            model.config.save_pretrained(str(tmp))
            if getattr(model, "generation_config", None) is not None:
                model.generation_config.save_pretrained(str(tmp))
            save_file(quantized_state(model, 8 if method.startswith("int8") else 4), str(tmp / "model.safetensors"),
                      metadata={"format": "pt"})
            load = {"weight_only": method}
        AutoTokenizer.from_pretrained(str(parent)).save_pretrained(str(tmp))
        write_manifest(tmp, task="causal-lm", stage="compress", args={"compress": {"method": method}},
                       parent=str(parent), method=method, load=load,
                       base_model=manifest.get("base_model", str(parent)),
                       notes={"bf16": "all weights bfloat16",
                              "int8-weight-only": "block Linear weights int8 per channel (torchao Int8WeightOnly)",
                              "int4-weight-only": f"block Linear weights int4, groups of {INT4_GROUP}, packed two "
                                                  "per byte (torchao IntxWeightOnly int4)"}[method])
    return out


# ---- measurement ---------------------------------------------------------------------------------------


def heldout_text(max_chars: int = 40_000) -> str:
    """Prose paragraphs from the packaged wiki-sample (markup stripped), from the end of the file."""
    from danlu.assets import asset_path

    raw = html.unescape(bz2.open(asset_path("wiki-sample"), "rt", encoding="utf-8").read())
    text = re.sub(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>|<!--.*?-->", "", raw, flags=re.S)
    for _ in range(3):  # nested templates
        text = re.sub(r"\{\{[^{}]*\}\}", "", text)
    text = re.sub(r"\[\[(?:[^\]|]*\|)?([^\]]*)\]\]", r"\1", text)
    text = re.sub(r"\[https?://\S+ ([^\]]*)\]", r"\1", text).replace("'''", "").replace("''", "")
    paragraphs = [p.strip() for p in text.splitlines()
                  if len(p) > 300 and not p.lstrip().startswith(("|", "{", "=", "*", "<", "!"))]
    chosen, size = [], 0
    for paragraph in reversed(paragraphs):
        chosen.append(paragraph)
        size += len(paragraph)
        if size >= max_chars:
            break
    return "\n\n".join(reversed(chosen))


@torch.inference_mode()
def perplexity(model, tokenizer, text: str, max_tokens: int = 2048, window: int = 512) -> float:
    """exp(mean next-token loss) over the first `max_tokens` tokens, in non-overlapping windows."""
    ids = tokenizer(text, return_tensors="pt").input_ids[0][:max_tokens]
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start:start + window].unsqueeze(0).to(device)
        if chunk.shape[1] < 2:
            break
        logits = model(input_ids=chunk).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], chunk[0, 1:], reduction="sum")
        total, count = total + float(loss), count + chunk.shape[1] - 1
    return float(torch.exp(torch.tensor(total / count)))


@torch.inference_mode()
def tokens_per_second(model, tokenizer, prompts: list[str], new_tokens: int, repeats: int) -> float:
    """Median new tokens/s of greedy generation of `new_tokens` for the batch of `prompts`."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    encoded = tokenizer(prompts, return_tensors="pt", padding=True)
    device = next(model.parameters()).device  # only ids and mask: generate() refuses e.g. token_type_ids
    batch = {k: encoded[k].to(device) for k in ("input_ids", "attention_mask")}
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  pad_token_id=tokenizer.pad_token_id)
    model.generate(**batch, **{**kwargs, "max_new_tokens": 2, "min_new_tokens": 2})  # warm-up
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.generate(**batch, **kwargs)
        rates.append(len(prompts) * new_tokens / (time.perf_counter() - started))
    return statistics.median(rates)


def measure_decoder(folder: str, text: str, threads: int = 0, repeats: int = 3, new_tokens: int = 32) -> dict:
    """Perplexity, tokens/s at batch 1 and 16, size and peak memory of one decoder variant (this process)."""
    from transformers import AutoTokenizer

    from danlu.compress.measure import peak_rss_bytes, size_on_disk

    if threads:
        torch.set_num_threads(threads)
    model = load_decoder_variant(folder, "cpu")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    words = text.split()
    prompts = [" ".join(words[i * 40:i * 40 + 24]) for i in range(16)]
    row = {"perplexity": perplexity(model, tokenizer, text),
           "tokens_per_second_b1": tokens_per_second(model, tokenizer, prompts[:1], new_tokens, repeats),
           "tokens_per_second_b16": tokens_per_second(model, tokenizer, prompts, new_tokens, repeats),
           "size_mb": size_on_disk(Path(folder)) / 1e6, "threads": torch.get_num_threads()}
    row["peak_memory_mb"] = peak_rss_bytes() / 1e6
    return row


def _measure_child(folder: Path, text: str, work: Path, threads: int, repeats: int) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    spec, result = work / "spec.json", work / "result.json"
    spec.write_text(json.dumps({"folder": str(folder), "text": text, "threads": threads, "repeats": repeats,
                                "out": str(result)}))
    proc = subprocess.run([sys.executable, "-m", "danlu.compress.decoder", str(spec)], capture_output=True, text=True)
    if proc.returncode != 0 or not result.exists():
        (work / "measure.log").write_text(proc.stderr)
        tail = [line for line in proc.stderr.splitlines() if line.strip()][-1:] or [f"exit {proc.returncode}"]
        raise RuntimeError(f"measuring failed: {tail[0]}")
    return json.loads(result.read_text())


def compress_decoder(args, parent: Path) -> dict:
    """The search for a decoder: bf16 / weight-only variants, budget = perplexity increase in percent."""
    import shutil
    import traceback

    from danlu.compress.report import format_table, write_report
    from danlu.compress.methods import expand_methods
    from danlu.errors import DanluError

    out = Path(args.out)
    claim_dir(out, reuse=args.overwrite or args.reuse_variants,
              how_to_reuse="pass --overwrite to replace them, or --reuse-variants to continue that search")
    (out / "variants").mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "logs", ignore_errors=True)
    if args.eval_data:
        source = Path(args.eval_data)
        if not source.is_file():
            raise DanluError(f"--eval-data for a decoder is a text file; no such file: {source}")
        text = source.read_text(encoding="utf-8")
    else:
        text = heldout_text()
    measure = lambda folder, name: _measure_child(folder, text, out / "logs" / name, args.threads,  # noqa: E731
                                                  min(args.repeats, 3))
    results = {"kind": "decoder", "artifact": str(parent), "eval_data": args.eval_data or "wiki-sample (held-out slice)",
               "objective": args.objective, "max_accuracy_drop": args.max_accuracy_drop,
               "load_average_1min": os.getloadavg()[0], "rows": [], "chosen": None}
    try:
        results["rows"].append({"variant": "original", "method": "original", "status": "ok", "path": str(parent),
                                **measure(parent, "original")})
    except RuntimeError as e:
        raise DanluError(f"cannot measure the original {parent}: {e}") from None
    methods = list(DECODER_METHODS) if "all" in args.methods else expand_methods(args.methods)
    for name in methods:
        row = {"variant": name, "method": name}
        if name not in DECODER_METHODS:
            row.update(status="skipped", reason=f"not for decoders in danlu (decoder methods: {', '.join(DECODER_METHODS)})")
        else:
            try:
                folder = write_decoder_variant(parent, out / "variants" / name, name)
                row.update(path=str(folder), **measure(folder, name), status="ok")
                update_metrics(folder, {"compress": row})
            except Exception as e:  # one method's crash keeps the others' rows
                (out / "logs").mkdir(parents=True, exist_ok=True)
                (out / "logs" / f"{name}.log").write_text(traceback.format_exc())
                row.update(status="failed", reason=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300])
        results["rows"].append(row)
        print(f"{name}: {row['status']}" + (f" ({row['reason']})" if row.get("reason") else ""), file=sys.stderr)
    _choose(results, args)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    write_report(out, results)
    print(format_table(results))
    print(results["verdict"])
    print(f"report: {out / 'report.md'}")
    return results


def _choose(results: dict, args) -> None:
    base = results["rows"][0]
    for row in results["rows"]:
        if row["status"] == "ok":
            row["perplexity_change_pct"] = 100 * (row["perplexity"] / base["perplexity"] - 1)
            row["within_budget"] = row["perplexity_change_pct"] <= args.max_accuracy_drop + 1e-9
    key, larger = {"latency": ("tokens_per_second_b1", True), "throughput": ("tokens_per_second_b16", True),
                   "size": ("size_mb", False)}[args.objective]
    candidates = [r for r in results["rows"] if r["status"] == "ok" and r["within_budget"]]
    best = max(candidates, key=lambda r: r[key] if larger else -r[key])
    results["chosen"] = {"variant": best["variant"], "path": best["path"]}
    if best is base:
        results["verdict"] = (f"no variant within a perplexity increase of {args.max_accuracy_drop}% beats the "
                              f"original on {args.objective}; keeping the original ({base['path']})")
    else:
        results["verdict"] = (f"chosen: {best['variant']} ({key} {best[key]:.1f} vs {base[key]:.1f}; perplexity "
                              f"{best['perplexity']:.3f} vs {base['perplexity']:.3f}) at {best['path']}; load it "
                              "with danlu.compress.decoder.load_decoder_variant")


if __name__ == "__main__":
    _spec = json.loads(Path(sys.argv[1]).read_text())
    _row = measure_decoder(_spec["folder"], _spec["text"], _spec["threads"], _spec["repeats"])
    Path(_spec["out"]).write_text(json.dumps(_row))
