"""danlu's GGUF export loaded by upstream llama.cpp itself: the prebuilt `xllamacpp` wheel in its own venv
(`make bench-gguf-setup`), driven as a subprocess through benchmarks/xllamacpp_worker.py.

Skipped where that venv was not made; CI does not make it. xllamacpp exposes llama.cpp's server, not its logits
over a prompt, so where the llama-cpp-python version of this test compared the prompt's next-token NLL, this one
compares the greedy continuation: its tokens, and the server's log-probability of each of them (log-softmax of
llama.cpp's logits over the whole vocabulary) against transformers' log-softmax at the same position. The full
comparison on SmolLM2 is benchmarks/gguf_llamacpp.py."""

import json
import subprocess
from pathlib import Path

import pytest
import torch

from danlu.export.gguf import GGUF_NAME, export_gguf

ROOT = Path(__file__).resolve().parents[1]
LLAMA_PYTHON = Path("/work/bench-venv-xllama/bin/python")
WORKER = ROOT / "benchmarks" / "xllamacpp_worker.py"
NEW_TOKENS = 16


def has_xllamacpp() -> bool:
    """The xllamacpp venv exists and imports the module."""
    return LLAMA_PYTHON.exists() and subprocess.run([str(LLAMA_PYTHON), "-c", "import xllamacpp"],
                                                    capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not has_xllamacpp(),
                                reason=f"no xllamacpp in {LLAMA_PYTHON}: run `make bench-gguf-setup`")


@pytest.fixture(scope="module")
def sharp_llama(tiny_llama, tmp_path_factory) -> Path:
    """The tiny Llama with weights 15x larger (std 0.3): the default std 0.02 leaves attention uniform and the
    next-token distribution flat (log-probabilities within 1e-3 of -log(vocab)), so a wrong rotary layout or
    attention would go unseen; these attend sharply and prefer a few tokens clearly."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("sharp-llama")
    config = AutoConfig.from_pretrained(str(tiny_llama))
    config.initializer_range = 0.3
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(tiny_llama)).save_pretrained(folder)
    return folder


def llama_cpp(request: dict) -> dict:
    done = subprocess.run([str(LLAMA_PYTHON), str(WORKER)], input=json.dumps(request), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@torch.inference_mode()
def transformers_greedy(model, prompt: list[int], new_tokens: int) -> list[int]:
    """`new_tokens` argmax tokens after `prompt`, recomputed from scratch each step (EOS does not stop it)."""
    ids = list(prompt)
    for _ in range(new_tokens):
        ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


# f32 with float32 attention (llama.cpp's default f16 KV cache and flash attention are 4e-3 off on these weights);
# f16 as llama.cpp runs it by default
@pytest.mark.parametrize("quantize, float32_attention, tolerance", [("f32", True, 1e-3), ("f16", False, 2e-2)])
def test_llama_cpp_decodes_the_export_as_transformers_does(sharp_llama, tmp_path, quantize, float32_attention,
                                                           tolerance):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export_gguf(str(sharp_llama), str(tmp_path / quantize), quantize, check=False)
    tokenizer = AutoTokenizer.from_pretrained(str(sharp_llama))
    text = "<|im_start|>user\nThe capital of France is Paris, 12 robots said.<|im_end|>\n"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    answer = llama_cpp({"gguf": str(tmp_path / quantize / GGUF_NAME), "threads": 1, "n_ctx": 128,
                        "float32_attention": float32_attention,
                        "greedy": [ids], "new_tokens": NEW_TOKENS, "top_logprobs": 2,
                        "tokenize": [{"text": text, "special": True}]})
    assert answer["tokens"] == [ids]  # llama.cpp reads danlu's tokenizer metadata as transformers does
    generated = answer["greedy"][0]
    assert len(generated) == NEW_TOKENS
    model = AutoModelForCausalLM.from_pretrained(str(sharp_llama), dtype=torch.float32).eval()
    with torch.inference_mode():  # transformers' log-softmax at each of llama.cpp's greedy positions
        logits = model(input_ids=torch.tensor([ids + generated])).logits[0, len(ids) - 1:-1].double()
    expected = torch.log_softmax(logits, dim=-1)
    reported = torch.tensor([p["logprob"] for p in answer["logprobs"][0]], dtype=torch.float64)
    # the forward pass is right (rotary permutation, norms, GQA): same log-probability of every chosen token ...
    torch.testing.assert_close(reported, expected[torch.arange(NEW_TOKENS), generated], atol=tolerance, rtol=0)
    # ... and each chosen token is transformers' argmax, up to the tolerance (a random tiny model has near-ties)
    assert (expected.max(dim=-1).values - expected[torch.arange(NEW_TOKENS), generated]).max() <= tolerance
    if quantize == "f32":  # the same weights: the same greedy tokens
        assert generated == transformers_greedy(model, ids, NEW_TOKENS)
