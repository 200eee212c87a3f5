"""danlu's GGUF export loaded by llama.cpp itself (llama-cpp-python in the benchmark venv, as a subprocess).

Skipped where that venv was not built (`make bench-serve-setup`); CI does not build it. The full comparison on
SmolLM2 is benchmarks/gguf_llamacpp.py."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from danlu.export.gguf import GGUF_NAME, export_gguf

ROOT = Path(__file__).resolve().parents[1]
LLAMA_PYTHON = Path(os.environ.get("DANLU_LLAMA_VENV", "/work/bench-venv-llama")) / "bin" / "python"
WORKER = ROOT / "benchmarks" / "llamacpp_worker.py"



def has_llama_cpp() -> bool:
    """The benchmark venv exists and its llama-cpp-python build finished."""
    return LLAMA_PYTHON.exists() and subprocess.run([str(LLAMA_PYTHON), "-c", "import llama_cpp"],
                                                    capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not has_llama_cpp(), reason=f"no llama-cpp-python in {LLAMA_PYTHON}")


def llama_cpp(request: dict) -> dict:
    done = subprocess.run([str(LLAMA_PYTHON), str(WORKER)], input=json.dumps(request), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("quantize, tolerance", [("f32", 1e-3), ("f16", 2e-2)])
def test_llama_cpp_scores_the_export_as_transformers_does(tiny_llama, tmp_path, quantize, tolerance):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export_gguf(str(tiny_llama), str(tmp_path / quantize), quantize, check=False)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama))
    text = "<|im_start|>user\nThe capital of France is Paris, 12 robots said.<|im_end|>\n"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    answer = llama_cpp({"gguf": str(tmp_path / quantize / GGUF_NAME), "threads": 1, "n_ctx": 128,
                        "windows": [{"ids": ids, "score_from": 0}], "tokenize": [{"text": text, "special": True}]})
    assert answer["tokens"] == [ids]  # llama.cpp reads danlu's tokenizer metadata as transformers does
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32).eval()
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
    expected = float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))
    nll = answer["nll"][0]
    assert nll["count"] == len(ids) - 1
    # per-token mean NLL of llama.cpp's forward against transformers' (rotary permutation, norms, GQA all right)
    assert abs(nll["sum"] - expected) / nll["count"] < tolerance
