"""Perplexity (held-out wiki-sample slice, first 1024 tokens) and size of SmolLM2-135M and its bf16 /
weight-only int8 / int4 variants, written and loaded through danlu.compress.decoder, and of the model as
`danlu serve --quantize int8` runs it (every Linear and the output head int8, danlu's kernel). Writes
benchmarks/results/compress_smollm2_perplexity.json."""
import time, json, os
from pathlib import Path
import torch
torch.set_num_threads(2)
from transformers import AutoTokenizer
from danlu.compress.decoder import write_decoder_variant, load_decoder_variant, perplexity, heldout_text
from danlu.compress.measure import size_on_disk
p = Path(os.path.expanduser("~/.cache/danlu/models/smollm2-135m"))
text = heldout_text()
tok = AutoTokenizer.from_pretrained(p)
rows = {}
for method in ["original", "int8-weight-only", "int4-weight-only", "bf16"]:
    folder = p if method == "original" else write_decoder_variant(p, Path(os.environ.get("OUT", "runs/smollm2-variants")) / method, method)
    t = time.perf_counter(); m = load_decoder_variant(folder, "cpu"); load = time.perf_counter() - t
    t = time.perf_counter(); ppl = perplexity(m, tok, text, max_tokens=1024); dt = time.perf_counter() - t
    rows[method] = {"perplexity": ppl, "size_mb": size_on_disk(folder) / 1e6, "load_s": load, "ppl_seconds": dt}
    print(method, rows[method], flush=True)
from danlu.serve.loading import load_decoder
m, _ = load_decoder(p, torch.float32, torch.device("cpu"), quantize="int8")
t = time.perf_counter(); ppl = perplexity(m, tok, text, max_tokens=1024); dt = time.perf_counter() - t
rows["serve --quantize int8 (head too)"] = {"perplexity": ppl, "ppl_seconds": dt}
print("serve --quantize int8", rows["serve --quantize int8 (head too)"], flush=True)
json.dump(rows, open("benchmarks/results/compress_smollm2_perplexity.json", "w"), indent=2)
