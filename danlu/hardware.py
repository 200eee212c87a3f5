"""What the hardware we run on is good at, decided at run time (never assumed).

The same danlu runs on CPUs with AMX/AVX512-BF16 (where bfloat16 is 4x faster than float32), on
AVX2-only CPUs (where torch emulates bfloat16 and a bf16 matmul is ~50x *slower* than float32:
measured 7.5 s vs 0.11 s for a 1024x1024 matmul on an AMD EPYC Zen 2), and on CUDA GPUs.
"""

from __future__ import annotations

import functools
import sys

import torch


@functools.cache
def bf16_is_fast(device_type: str | None = None) -> bool:
    """Whether bfloat16 matmuls run natively on `device_type` (default: cuda if present, else cpu)."""
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda":
        # without including_emulation=False torch says yes on pre-Ampere GPUs (V100, T4), which only emulate it
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type == "cpu":
        cpu = getattr(torch, "cpu", None)
        checks = [getattr(cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
        return any(check() for check in checks if check is not None)
    return False


@functools.cache
def int8_engine() -> str:
    """The PyTorch quantized engine for dynamic int8 Linear on this CPU.

    oneDNN's int8 kernels need AMX or VNNI to shine (on an AMX CPU it ran dynamic int8 BERT ~1.4x faster
    than the x86 engine); without them (AVX2-only, e.g. AMD EPYC Zen 2) the x86 engine (FBGEMM) was
    faster: MiniLM-L6 at batch 1 10.3 ms vs 17.2 ms, at batch 32 135 vs 126 sequences/s."""
    engines = torch.backends.quantized.supported_engines
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_amx_tile_supported", "_is_vnni_supported")]
    fast_onednn = any(check() for check in checks if check is not None)
    for engine in (("onednn", "x86", "fbgemm") if fast_onednn else ("x86", "fbgemm", "onednn")):
        if engine in engines:
            return engine
    return torch.backends.quantized.engine


def use_bf16(requested: bool, flag: str = "--bf16", device_type: str | None = None) -> bool:
    """`requested`, unless the hardware would only emulate bfloat16: then warn once and use float32."""
    if not requested or bf16_is_fast(device_type):
        return requested
    _warn_once(f"warning: {flag} ignored: this {device_type or ('GPU' if torch.cuda.is_available() else 'CPU')} "
               "has no native bfloat16 (it needs AVX512-BF16 or AMX on a CPU), so bf16 would be emulated and "
               "far slower than float32; running in float32")
    return False


@functools.cache
def _warn_once(message: str) -> None:
    print(message, file=sys.stderr)
