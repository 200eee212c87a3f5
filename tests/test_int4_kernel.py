"""danlu's 4-bit weight kernel (groups of 32 with a float16 step and offset, llama.cpp's Q4_1 layout): the
product it computes, batch invariance, the fallbacks (kernels disabled, no compiler), and a 4-bit decoder
served by the engine's lean decode step with greedy parity against its own `generate`."""

import pytest
import torch

from danlu.kernels import KernelUnavailable, kernel_error, q4_linear
from danlu.kernels.int4 import GROUP, Int4Linear, quantize_groups, unpack
from danlu.kernels.int8 import Int8Linear, quantize_linears

needs_kernel = pytest.mark.skipif(kernel_error() is not None, reason=f"kernels unavailable: {kernel_error()}")


def q4_weight(n, k, seed=0):
    """A float weight every group of which is exactly representable (as a dequantized Q4_1 file is)."""
    g = torch.Generator().manual_seed(seed)
    step = (torch.rand(n, k // GROUP, 1, generator=g) * 0.02 + 1e-3).half().float()
    offset = (-torch.rand(n, k // GROUP, 1, generator=g) * 0.1).half().float()
    q = torch.randint(0, 16, (n, k // GROUP, GROUP), generator=g).float()
    q[..., 0], q[..., 1] = 0, 15  # each group spans its whole range
    return (offset + step * q).reshape(n, k)


def test_groups_give_back_a_q4_weight_exactly_and_pack_two_codes_a_byte():
    w = q4_weight(6, 64)
    packed, step, offset = quantize_groups(w)
    assert packed.shape == (6, 32) and packed.dtype == torch.uint8
    assert step.shape == offset.shape == (6, 2) and step.dtype == torch.float16
    layer = Int4Linear(packed, step, offset)
    torch.testing.assert_close(layer.dequantized(), w, rtol=0, atol=1e-6)
    codes = unpack(packed)
    assert codes.max() == 15 and codes.min() == 0
    assert (packed[:, 0] & 0x0F).tolist() == codes[:, 0].tolist() and (packed[:, 0] >> 4).tolist() == codes[:, 16].tolist()


def test_a_constant_group_quantizes_without_dividing_by_zero():
    w = torch.full((2, 32), 0.25)
    layer = Int4Linear(*quantize_groups(w))
    torch.testing.assert_close(layer.dequantized(), w)


def integer_reference(x, layer):
    """What the kernel computes: x quantized to int8 per group of 32 (step max|x| / 127), then
    sum over groups of d * dx * (xq . q) + offset * sum(x), in float64."""
    rows, k = x.shape
    xg = x.reshape(rows, k // GROUP, GROUP)
    amax = xg.abs().amax(-1, keepdim=True)
    xq = torch.round(xg * torch.where(amax > 0, 127 / amax, 0))
    q = unpack(layer.packed).double().reshape(layer.out_features, k // GROUP, GROUP)
    dots = torch.einsum("mgk,ngk->mng", xq.double(), q)
    out = (dots * layer.step.double()[None] * (amax.double() / 127).transpose(1, 2)).sum(-1)
    out += (xg.double().sum(-1)[:, None, :] * layer.offset.double()[None]).sum(-1)
    return (out + layer.bias.double()).float()


@needs_kernel
@pytest.mark.parametrize("rows,out_features,in_features", [(1, 7, 32), (3, 40, 64), (5, 33, 96), (70, 9, 576)])
def test_kernel_computes_the_product_with_int8_activation_groups(rows, out_features, in_features):
    torch.manual_seed(rows)
    layer = Int4Linear(*quantize_groups(torch.randn(out_features, in_features)), torch.randn(out_features))
    x = torch.randn(rows, in_features)
    got = q4_linear(x, layer.packed, layer.step, layer.offset, layer.bias)
    torch.testing.assert_close(got, integer_reference(x, layer), rtol=1e-4, atol=1e-4)
    # and within the activations' rounding of the float product
    want = (x.double() @ layer.dequantized().double().T + layer.bias.double()).float()
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05 * want.abs().max().item())


@needs_kernel
def test_each_row_is_the_same_whatever_the_batch():
    torch.manual_seed(1)
    layer = Int4Linear(*quantize_groups(torch.randn(50, 128)))
    batch = torch.randn(20, 128)
    together = layer(batch)
    for i in range(20):
        assert torch.equal(layer(batch[i:i + 1])[0], together[i])  # bit for bit
    assert torch.equal(layer(batch[5:12]), together[5:12])


@needs_kernel
def test_widths_not_a_multiple_of_32_stay_int8():
    model = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.Linear(16, 8))
    assert quantize_linears(model, bits=4) == 2
    assert type(model[0]) is Int4Linear and type(model[1]) is Int8Linear
    with pytest.raises(KernelUnavailable, match="multiple of 8 .int8. or 32"):
        q4_linear(torch.randn(1, 16), torch.zeros(2, 8, dtype=torch.uint8), torch.zeros(2, 1, dtype=torch.float16),
                  torch.zeros(2, 1, dtype=torch.float16), None)


def without_kernels(monkeypatch, **env):
    """Run the kernels' loader again with `env` set (and a fresh cache folder): returns kernel_error()."""
    import danlu.kernels as kernels

    kernels._library.cache_clear()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return kernel_error()


@pytest.fixture
def restore_kernels():
    import danlu.kernels as kernels

    yield
    kernels._library.cache_clear()


def test_without_a_compiler_the_layer_says_why_and_falls_back_to_torch(monkeypatch, tmp_path, restore_kernels):
    """A machine with no C++ compiler (simulated: CXX names a missing binary, and nothing is built yet)."""
    torch.manual_seed(2)
    layer = Int4Linear(*quantize_groups(torch.randn(8, 64)))
    x = torch.randn(3, 64)
    want = x @ layer.dequantized().T  # the fallback's float product (the kernel's differs by its int8 activations)
    reason = without_kernels(monkeypatch, CXX=str(tmp_path / "no-such-c++"), DANLU_HOME=str(tmp_path / "home"))
    assert reason is not None and "no-such-c++" in reason and "cannot run" in reason
    assert "torch" in layer.extra_repr()
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)
    from danlu.errors import DanluError
    from danlu.serve.loading import _check_int8

    with pytest.raises(DanluError, match="--quantize int4 needs danlu's CPU kernel, which is unavailable here: C.. "
                                         "compiler .*no-such-c"):
        _check_int8(torch.float32, torch.device("cpu"), "int4")


@needs_kernel
def test_4bit_decoder_serves_the_same_greedy_tokens_as_its_generate(tiny_llama):
    """Layers 4-bit, head int8; the engine runs its lean decode step (stacked q/k/v and gate/up sharing the
    model's memory), and each request still gets exactly what `generate` gives it alone."""
    from danlu.serve.engine import DecoderEngine
    from danlu.serve.loading import load_decoder
    from test_serve_engine import generate_alone, greedy_in_batches

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, tokenizer = load_decoder(tiny_llama, torch.float32, torch.device("cpu"), quantize="int4")
        assert sum(isinstance(m, Int4Linear) for m in model.modules()) == 2 * 7
        assert type(model.lm_head) is Int8Linear
        prompts, seqs, _ = greedy_in_batches(model, tokenizer, count=12, longest=60, slots=4, seed=2)
        engine = DecoderEngine(model, tokenizer, max_batch_size=2, max_queue=2, max_model_len=64, prefill_chunk=8)
        assert engine.decode_forward is not None
        attn = model.model.layers[0].self_attn
        assert attn.k_proj.packed.untyped_storage().data_ptr() == attn.q_proj.packed.untyped_storage().data_ptr()
        for prompt, seq in zip(prompts, seqs):
            assert seq.generated == generate_alone(model, prompt, seq.params.max_tokens)
    finally:
        torch.set_num_threads(threads)


@needs_kernel
def test_residual_add_and_rms_norm_in_one_call():
    from danlu.kernels import kernel_function

    fn = kernel_function("danlu_add_rms_norm")
    torch.manual_seed(3)
    h, delta, weight = torch.randn(5, 64), torch.randn(5, 64), torch.randn(64)
    want_h = h + delta
    want = torch.nn.functional.rms_norm(want_h, (64,), weight, 1e-5)
    out = torch.empty_like(h)
    assert fn(h.data_ptr(), delta.data_ptr(), weight.data_ptr(), 1e-5, out.data_ptr(), 5, 64) == 0
    torch.testing.assert_close(h, want_h)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    one = torch.empty(1, 64)
    fn(h[2:3].data_ptr(), None, weight.data_ptr(), 1e-5, one.data_ptr(), 1, 64)  # no delta: norm only
    assert torch.equal(one[0], out[2])  # and a row is the same alone as in the batch
