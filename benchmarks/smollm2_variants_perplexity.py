"""Perplexity (held-out wiki-sample slice, first 1024 tokens) and size of SmolLM2-135M and its bf16 /
weight-only int8 / int4 variants, written and loaded through danlu.compress.decoder, and of the model as
`danlu serve --quantize int8` runs it (every Linear and the output head int8, danlu's kernel) and as
`--quantize int4` runs it (layers in 4-bit groups of 32, the head int8). Writes
benchmarks/results/compress_smollm2_perplexity.json. `--serve-only` measures only the served formats (and
keeps the other rows of the file)."""
import sys, time, json, os
from pathlib import Path
import torch
torch.set_num_threads(2)
from transformers import AutoTokenizer
from danlu.compress.decoder import write_decoder_variant, load_decoder_variant, perplexity, heldout_text
from danlu.compress.measure import size_on_disk
p = Path(os.path.expanduser("~/.cache/danlu/models/smollm2-135m"))
text = heldout_text()
tok = AutoTokenizer.from_pretrained(p)
RESULT = Path("benchmarks/results/compress_smollm2_perplexity.json")
serve_only = "--serve-only" in sys.argv
rows = json.loads(RESULT.read_text()) if serve_only else {}
for method in [] if serve_only else ["original", "int8-weight-only", "int4-weight-only", "bf16"]:
    folder = p if method == "original" else write_decoder_variant(p, Path(os.environ.get("OUT", "runs/smollm2-variants")) / method, method)
    t = time.perf_counter(); m = load_decoder_variant(folder, "cpu"); load = time.perf_counter() - t
    t = time.perf_counter(); ppl = perplexity(m, tok, text, max_tokens=1024); dt = time.perf_counter() - t
    rows[method] = {"perplexity": ppl, "size_mb": size_on_disk(folder) / 1e6, "load_s": load, "ppl_seconds": dt}
    print(method, rows[method], flush=True)
from danlu.serve.loading import load_decoder
for quantize, row in (("int8", "serve --quantize int8 (head too)"), ("int4", "serve --quantize int4 (head int8)")):
    m, _ = load_decoder(p, torch.float32, torch.device("cpu"), quantize=quantize)
    t = time.perf_counter(); ppl = perplexity(m, tok, text, max_tokens=1024); dt = time.perf_counter() - t
    rows[row] = {"perplexity": ppl, "ppl_seconds": dt}
    print(row, rows[row], flush=True)
json.dump(rows, open(RESULT, "w"), indent=2)
