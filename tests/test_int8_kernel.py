"""danlu's weight-only int8 CPU kernel (danlu/kernels): the product it computes, batch invariance, the
torch fallback, and whole decoders quantized with it (greedy parity of the serving engine included)."""

import pytest
import torch

from danlu.kernels import KernelUnavailable, kernel_error, w8_linear
from danlu.kernels.int8 import Int8Linear, quantize_linears, quantize_rows

needs_kernel = pytest.mark.skipif(kernel_error() is not None, reason=f"int8 kernel unavailable: {kernel_error()}")


def reference(x, qweight, scale, bias):
    out = x.double() @ (qweight.double() * scale.double()[:, None]).T
    return (out + bias.double() if bias is not None else out).float()


def test_quantize_rows_scales_each_row_to_127():
    w = torch.tensor([[0.5, -1.0, 0.25, 0.0], [2.0, 1.0, -0.5, 0.125]])
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and q.abs().amax(1).tolist() == [127, 127]
    assert torch.allclose(scale, torch.tensor([1.0, 2.0]) / 127)
    assert (q.float() * scale[:, None] - w).abs().max() <= scale.max() / 2 + 1e-7


@needs_kernel
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 7, 64, 65, 130])
@pytest.mark.parametrize("out_features,in_features", [(1, 8), (5, 64), (13, 136), (64, 200)])
def test_kernel_computes_the_dequantized_product(rows, out_features, in_features):
    torch.manual_seed(rows * 1000 + out_features)
    q, scale = quantize_rows(torch.randn(out_features, in_features))
    x, bias = torch.randn(rows, in_features), torch.randn(out_features)
    for b in (None, bias):
        got = w8_linear(x, q, scale, b)
        assert got.shape == (rows, out_features)
        torch.testing.assert_close(got, reference(x, q, scale, b), rtol=1e-5, atol=1e-4)


@needs_kernel
def test_each_row_is_the_same_whatever_the_batch():
    torch.manual_seed(0)
    q, scale = quantize_rows(torch.randn(96, 576))
    batch = torch.randn(67, 576)
    together = w8_linear(batch, q, scale, None)
    for i in (0, 1, 2, 33, 64, 66):
        assert torch.equal(w8_linear(batch[i:i + 1], q, scale, None)[0], together[i])  # bit for bit
    assert torch.equal(w8_linear(batch[5:12], q, scale, None), together[5:12])


@needs_kernel
def test_kernel_refuses_widths_not_a_multiple_of_8_and_the_module_falls_back():
    q, scale = quantize_rows(torch.randn(6, 12))
    x = torch.randn(3, 12)
    with pytest.raises(KernelUnavailable, match="multiple of 8"):
        w8_linear(x, q, scale, None)
    torch.testing.assert_close(Int8Linear(q, scale)(x), reference(x, q, scale, None), rtol=1e-5, atol=1e-5)


def test_module_matches_the_float_layer_it_replaces():
    torch.manual_seed(1)
    linear = torch.nn.Linear(64, 24)
    int8 = Int8Linear.from_linear(linear)
    x = torch.randn(2, 5, 64)
    with torch.inference_mode():
        got, want = int8(x), linear(x)
    assert got.shape == (2, 5, 24)
    assert (got - want).abs().max() < 0.02 * want.abs().max()
    torch.testing.assert_close(got, reference(x.reshape(10, 64), int8.qweight, int8.scale, linear.bias).view(2, 5, 24),
                               rtol=1e-5, atol=1e-5)


def test_disabled_kernel_says_why(monkeypatch):
    import danlu.kernels as kernels

    kernels._library.cache_clear()
    monkeypatch.setenv("DANLU_NO_KERNELS", "1")
    try:
        assert kernel_error() == "disabled by DANLU_NO_KERNELS"
        q, scale = quantize_rows(torch.randn(4, 8))
        with pytest.raises(KernelUnavailable, match="DANLU_NO_KERNELS"):
            w8_linear(torch.randn(1, 8), q, scale, None)
    finally:
        monkeypatch.delenv("DANLU_NO_KERNELS")
        kernels._library.cache_clear()


@needs_kernel
def test_quantized_decoder_serves_the_same_greedy_tokens_as_its_generate(tiny_llama):
    """With every Linear int8 (the output head too), the engine's continuous batching still gives each
    request exactly what `generate` gives it alone: the kernel's rows do not depend on the batch."""
    from danlu.serve.loading import load_decoder
    from test_serve_engine import generate_alone, greedy_in_batches

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, tokenizer = load_decoder(tiny_llama, torch.float32, torch.device("cpu"), quantize="int8")
        swapped = [m for m in model.modules() if isinstance(m, Int8Linear)]
        assert len(swapped) == 2 * 7 + 1 and model.lm_head in swapped
        assert model.model.embed_tokens.weight.dtype == torch.float32  # the lookup table stays float
        prompts, seqs, _ = greedy_in_batches(model, tokenizer, count=12, longest=60, slots=4, seed=1)
        for prompt, seq in zip(prompts, seqs):
            assert seq.generated == generate_alone(model, prompt, seq.params.max_tokens)
    finally:
        torch.set_num_threads(threads)


def test_quantize_int8_is_refused_off_cpu_and_for_bf16_before_loading(tiny_llama):
    from danlu.errors import DanluError
    from danlu.serve.loading import load_decoder

    # refused before any weights are loaded: no CUDA is needed to see the CUDA refusal
    with pytest.raises(DanluError, match="runs on CPU"):
        load_decoder(tiny_llama, torch.float32, torch.device("cuda"), quantize="int8")
    with pytest.raises(DanluError, match="float32"):
        load_decoder(tiny_llama, torch.bfloat16, torch.device("cpu"), quantize="int8")


def test_quantize_int8_is_refused_for_encoders(tiny_bert):
    from danlu.errors import DanluError
    from danlu.serve.app import build_state
    from danlu.serve.args import ServeArgs

    with pytest.raises(DanluError, match=r"applies to decoders, and .* is an encoder \(classifier\)"):
        build_state(ServeArgs(model=str(tiny_bert), quantize="int8"))


def test_quantize_linears_keeps_the_named_ones_and_unties_the_head(tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32).eval()
    names = {"model.layers.0.mlp.up_proj", "lm_head"}
    assert quantize_linears(model, names=names, head=False) == 1  # the head is excluded by head=False
    assert isinstance(model.model.layers[0].mlp.up_proj, Int8Linear)
    assert type(model.model.layers[1].mlp.up_proj) is torch.nn.Linear
    assert quantize_linears(model, names={"lm_head"}) == 1
    assert isinstance(model.lm_head, Int8Linear) and model.config.tie_word_embeddings is False


def test_module_follows_its_buffers_when_they_move_or_change():
    """The kernel's addresses are cached: casting the module, or giving it new weights, must not leave it
    reading the old memory."""
    torch.manual_seed(2)
    int8 = Int8Linear.from_linear(torch.nn.Linear(16, 8))
    x = torch.randn(3, 16)
    want = reference(x, int8.qweight, int8.scale, int8.bias)
    torch.testing.assert_close(int8(x), want, rtol=1e-5, atol=1e-5)
    int8.double()  # scale and bias become float64: the float64 path must be used and still be right
    torch.testing.assert_close(int8(x.double()).float(), want, rtol=1e-5, atol=1e-5)
    int8.float()
    torch.testing.assert_close(int8(x), want, rtol=1e-5, atol=1e-5)
    q, scale = quantize_rows(torch.randn(8, 16))
    int8.qweight = q  # a new tensor at a new address
    torch.testing.assert_close(int8(x), reference(x, q, int8.scale, int8.bias), rtol=1e-5, atol=1e-5)
    int8.scale = scale
    torch.testing.assert_close(int8(x), reference(x, q, scale, int8.bias), rtol=1e-5, atol=1e-5)
