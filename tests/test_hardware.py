"""What danlu decides about the hardware: bfloat16 only where it is computed natively."""

import types

import pytest
import torch

from danlu import hardware


@pytest.fixture
def fresh_cache():
    hardware.bf16_is_fast.cache_clear()
    yield
    hardware.bf16_is_fast.cache_clear()


@pytest.mark.parametrize("major, native", [(7, False), (8, True), (9, True)])
def test_cuda_bf16_only_from_ampere_on(monkeypatch, fresh_cache, major, native):
    # a V100 or T4 (compute capability 7.x) can hold bfloat16 tensors, so torch's default check says yes
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: types.SimpleNamespace(major=major))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)
    assert hardware.bf16_is_fast("cuda") is native
