import json

import numpy as np
import pytest

from danlu.errors import DanluError
from danlu.export.gguf import GGUF_NAME, export_gguf, permute_rotary


def test_rotary_permutation_interleaves_each_head_halves():
    # one head of dim 4, rows [a0, a1, b0, b1] (first half, second half) -> [a0, b0, a1, b1]
    w = np.arange(8, dtype=np.float32).reshape(4, 2)
    assert permute_rotary(w, 1).tolist() == [[0, 1], [4, 5], [2, 3], [6, 7]]


@pytest.mark.parametrize("quantize, tolerance", [("f32", 1e-4), ("f16", 2e-2), ("q8_0", 0.1), ("q4_0", 0.5)])
def test_gguf_round_trip_through_transformers(tiny_llama, tmp_path, quantize, tolerance):
    import gguf

    out = tmp_path / quantize
    result = export_gguf(str(tiny_llama), str(out), quantize)
    parity = result["parity"]
    assert parity["same_tokenization"] and parity["max_abs_logit_diff"] < tolerance
    assert parity["top1_agreement"] > {"f32": 0.999, "f16": 0.95, "q8_0": 0.9, "q4_0": 0.5}[quantize]
    reader = gguf.GGUFReader(str(out / GGUF_NAME))
    fields = {k: f.contents() for k, f in reader.fields.items()
              if k in ("general.architecture", "llama.block_count", "tokenizer.ggml.model",
                       "tokenizer.ggml.eos_token_id", "tokenizer.ggml.pre")}
    assert fields == {"general.architecture": "llama", "llama.block_count": 2, "tokenizer.ggml.model": "gpt2",
                      "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.pre": "gpt-2"}
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_norm.weight"] == "F32"
    tied = json.loads((tiny_llama / "config.json").read_text()).get("tie_word_embeddings")
    assert ("output.weight" in types) == (not tied)  # tied: llama.cpp reuses token_embd
    assert types["blk.0.attn_q.weight"] == {"f32": "F32", "f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0"}[quantize]
    # 4-bit files keep the embedding / output matrix 8-bit, as llama.cpp's do
    assert types["token_embd.weight"] == {"f32": "F32", "f16": "F16", "q8_0": "Q8_0", "q4_0": "Q8_0"}[quantize]
    manifest = json.loads((out / "danlu.json").read_text())
    assert manifest["stage"] == "export" and manifest["gguf"]["quantize"] == quantize


def test_gguf_refuses_a_non_llama(tiny_bert, tmp_path):
    with pytest.raises(DanluError, match="Llama decoders"):
        export_gguf(str(tiny_bert), str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()
