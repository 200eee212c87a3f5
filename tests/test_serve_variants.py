"""`danlu serve` runs the weight-only quantized decoder variants that `danlu compress` writes."""

import pytest
import torch

from danlu.kernels import kernel_error
from danlu.kernels.int8 import Int8Linear
from danlu.serve.engine import DecoderEngine, Sequence
from danlu.serve.loading import choose_dtype, load_decoder
from danlu.serve.sampling import SamplingParams
from test_serve_engine import run_all


def test_int8_weight_only_variant_serves_the_same_greedy_tokens_as_its_generate(tiny_llama, tmp_path):
    from danlu.compress.decoder import load_decoder_variant, write_decoder_variant

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        variant = write_decoder_variant(tiny_llama, tmp_path / "int8", "int8-weight-only")
        model, tokenizer = load_decoder(variant, torch.float32, torch.device("cpu"))
        layer = model.model.layers[0].mlp.up_proj  # still quantized: danlu's CPU kernel, else torchao
        assert isinstance(layer, Int8Linear) if kernel_error() is None else "Int8" in type(layer.weight).__name__
        prompt = tokenizer("The capital of France is")["input_ids"]
        reference = load_decoder_variant(variant, "cpu").generate(
            torch.tensor([prompt]), max_new_tokens=12, do_sample=False, min_new_tokens=12)[0, len(prompt):].tolist()
        engine = DecoderEngine(model, tokenizer, max_batch_size=2, max_queue=10, max_model_len=256, prefill_chunk=16)
        engine.start()
        try:
            seq = Sequence(prompt, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True), lambda e: None,
                           tokenizer)
            run_all(engine, [seq])
        finally:
            engine.stop()
        assert seq.generated == reference
    finally:
        torch.set_num_threads(threads)


def test_auto_dtype_is_bf16_only_where_native(monkeypatch):
    from danlu import hardware

    monkeypatch.setattr(hardware, "bf16_is_fast", lambda device_type=None: False)
    assert choose_dtype("auto", torch.device("cpu")) is torch.float32
    monkeypatch.setattr(hardware, "bf16_is_fast", lambda device_type=None: True)
    assert choose_dtype("auto", torch.device("cpu")) is torch.bfloat16
    assert choose_dtype("float32", torch.device("cpu")) is torch.float32


def test_device_choice_names_the_devices_there_are(monkeypatch):
    from danlu.errors import DanluError
    from danlu.serve.loading import choose_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device("auto") == torch.device("cpu")
    with pytest.raises(DanluError, match="no CUDA device"):
        choose_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert choose_device("auto") == torch.device("cuda")
    assert choose_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(DanluError, match=r"--device cuda:1: .* 1 CUDA device\(s\), cuda:0 to cuda:0"):
        choose_device("cuda:1")
