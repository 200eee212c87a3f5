"""`danlu serve` on a CUDA GPU (skipped without one): greedy tokens equal `generate` alone whatever the batch,
seeded sampling runs on the GPU beside them, and the server picks CUDA and bfloat16 by itself."""

import math
import random

import httpx
import pytest
import torch
from serving import running_server
from test_serve_engine import run_all

from danlu.serve.engine import DecoderEngine, Sequence
from danlu.serve.sampling import SamplingParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# bfloat16 keeps 8 significant bits: a batch of another size sums its products in another order, so a greedy
# choice between two tokens whose logits (themselves rounded to bfloat16) lie within a few units in the last
# place may fall either way; generate's own batch of one has the same freedom. float32 gets no such allowance.
# On CPU (emulated bfloat16, this test's logic with the device swapped) 4 of 20 sequences differed, each at a
# gap of exactly one unit.
BF16_NEAR_TIE_ULPS = 8


@pytest.fixture(scope="module")
def gpu_llama(tiny_llama, tmp_path_factory):
    """4 layers, width 256, head_dim 64, grouped-query attention (shapes the GPU kernels take), random weights drawn
    wider than usual so that greedy choices are seldom near-ties; the packaged SmolLM2 tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         initializer_range=0.06, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    folder = tmp_path_factory.mktemp("gpu-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def load(folder, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, attn_implementation="sdpa")
    return model.to("cuda").eval(), AutoTokenizer.from_pretrained(str(folder))


def top2_gap_in_ulps(model, prompt: list[int], tokens: list[int], at: int) -> float:
    """How far apart `generate`'s two best logits were before its token number `at`, in bfloat16 units in the
    last place of the best one."""
    with torch.inference_mode():
        logits = model(torch.tensor([prompt + tokens[:at]], device="cuda")).logits[0, -1].float()
    best = torch.topk(logits, 2).values.tolist()
    ulp = 2.0 ** (math.floor(math.log2(abs(best[0]) or 1.0)) - 7)
    return (best[0] - best[1]) / ulp


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_engine_greedy_tokens_match_generate_alone_on_cuda(gpu_llama, dtype):
    model, tokenizer = load(gpu_llama, dtype)
    rng = random.Random(0)
    prompts = [[rng.randrange(len(tokenizer)) for _ in range(rng.randint(1, 300))] for _ in range(20)]
    lengths = [rng.randint(1, 24) for _ in prompts]

    def sampled():  # seeded sampling on the GPU, in the same batches as the greedy sequences
        return [Sequence(prompts[i], SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=i),
                         lambda e: None, tokenizer) for i in range(4)]

    engine = DecoderEngine(model, tokenizer, max_batch_size=6, max_queue=100, max_model_len=1024, prefill_chunk=32)
    engine.start()
    try:
        greedy = [Sequence(p, SamplingParams(max_tokens=n, temperature=0), lambda e: None, tokenizer)
                  for p, n in zip(prompts, lengths)]
        first, second = sampled(), sampled()
        events = run_all(engine, greedy + first)
        run_all(engine, second)
    finally:
        engine.stop()
    assert all(events[s.id][-1].finish_reason in ("stop", "length") for s in greedy + first)
    if dtype is torch.float32:  # same seed, same tokens (in bf16 another batch may move a draw across a boundary)
        assert [s.generated for s in first] == [s.generated for s in second]
    differences = []
    for prompt, n, seq in zip(prompts, lengths, greedy):
        ids = torch.tensor([prompt], device="cuda")
        reference = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                   do_sample=False)[0, len(prompt):].tolist()
        if seq.generated != reference:
            at = next((i for i, (a, b) in enumerate(zip(seq.generated, reference)) if a != b), len(reference))
            differences.append((len(prompt), at, top2_gap_in_ulps(model, prompt, reference, at)))
    if dtype is torch.float32:
        assert differences == []
    else:  # each difference starts at a near-tie of the reference
        assert all(gap <= BF16_NEAR_TIE_ULPS for _, _, gap in differences), differences


def test_server_chooses_cuda_and_bfloat16_and_samples_there(gpu_llama, tmp_path):
    with running_server(gpu_llama, "--served-model-name", "g", log_dir=tmp_path) as server:
        dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
        assert f"(decoder, {dtype}, cuda" in server.output()

        def sample():
            r = httpx.post(server.url + "/v1/completions", timeout=60, json={
                "model": "g", "prompt": "Pick words:", "max_tokens": 12, "temperature": 1.0, "top_p": 0.9, "n": 3,
                "seed": 5, "ignore_eos": True})
            assert r.status_code == 200, r.text
            return [c["text"] for c in r.json()["choices"]]

        first = sample()
        assert sample() == first and len(set(first)) == 3
