"""What kind of model a folder holds, and loading it on the chosen device and dtype.

Every decoder the server runs is loaded by `load_decoder`, which reads the artifact's danlu.json:
that is the one place where variants written by other stages (quantized, pruned) are hooked in.
"""

from __future__ import annotations

from pathlib import Path

import torch

from danlu.artifact import check_safe_weights, read_manifest
from danlu.errors import DanluError


def choose_device(device: str) -> torch.device:
    """`auto` is CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DanluError(f"--device {device}: no CUDA device is available")
    chosen = torch.device(device)
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise DanluError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return chosen


def choose_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 where the hardware computes it natively (CUDA with bf16, CPUs with AMX or
    AVX512-BF16), else float32: on an AVX2-only CPU torch emulates bf16, far slower than float32."""
    from danlu.hardware import bf16_is_fast

    if dtype == "float32":
        return torch.float32
    if dtype == "bfloat16":
        return torch.bfloat16
    return torch.bfloat16 if bf16_is_fast(device.type) else torch.float32


def load_decoder(path: Path, dtype: torch.dtype, device: torch.device, quantize: str = "none"):
    """A causal LM and its tokenizer, in eval mode, cast to `dtype` on `device`; `quantize="int8"` then
    stores every Linear (the output head too) as weight-only int8 for danlu's CPU kernel.

    The weights are cast (never autocast: autocast re-casts every weight at every decode step). A
    weight-only int8/int4 variant from `danlu compress` keeps its quantized weights (`dtype` then applies
    to nothing: torchao's kernels choose their own compute type)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_safe_weights(path)
    if quantize == "int8":
        _check_int8(dtype, device)
    from danlu.runtime import is_decoder, task_of

    if not is_decoder(path):
        raise DanluError(f"{path} is a {task_of(path)!r} model, not a decoder")
    manifest = read_manifest(path)
    if (manifest.get("load") or {}).get("weight_only"):
        from danlu.runtime.variants import load_decoder_variant

        model = load_decoder_variant(path, str(device))
    elif (path / "adapter_config.json").exists():  # LoRA (danlu finetune --task sft --lora): merged on load
        from danlu.runtime import load_model

        model = load_model(path).to(dtype).to(device).eval()
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, attn_implementation="sdpa")
        model.to(device).eval()
    if quantize == "int8":
        from danlu.kernels.int8 import quantize_linears

        quantize_linears(model, head=True)
        release_freed_memory()  # the float32 weights just dropped (~400 MB for SmolLM2-135M)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return model, tokenizer


def _check_int8(dtype: torch.dtype, device: torch.device) -> None:
    """Refuse `--quantize int8` where it cannot run, before any weights are loaded."""
    from danlu.kernels import kernel_error

    if device.type != "cpu":
        raise DanluError(f"--quantize int8 runs on CPU (danlu's AVX2 kernel); on {device} use --dtype bfloat16")
    if dtype != torch.float32:
        raise DanluError("--quantize int8 computes in float32: use it with --dtype float32 or auto")
    reason = kernel_error()
    if reason:
        raise DanluError(f"--quantize int8 needs danlu's CPU kernel, which is unavailable here: {reason}")


def release_freed_memory() -> None:
    """Hand memory freed by Python back to the OS (glibc keeps large freed blocks otherwise)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def load_embedder(path: Path, dtype: torch.dtype, device: torch.device):
    """An encoder (e.g. MiniLM) for sentence embeddings, and its tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    check_safe_weights(path)
    model = AutoModel.from_pretrained(str(path), dtype=dtype)
    model.to(device).eval()
    return model, AutoTokenizer.from_pretrained(str(path))
