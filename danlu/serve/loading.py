"""What kind of model a folder holds, and loading it on the chosen device and dtype.

Every decoder the server runs is loaded by `load_decoder`, which reads the artifact's danlu.json:
that is the one place where variants written by other stages (quantized, pruned) are hooked in.
"""

from __future__ import annotations

import json
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
    return torch.device(device)


def cpu_has_amx() -> bool:
    """True on CPUs with AMX-BF16 tiles (where bf16 matmuls are several times faster than fp32)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags


def choose_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 where the hardware computes it fast (CUDA with bf16, CPUs with AMX), else float32."""
    if dtype == "float32":
        return torch.float32
    if dtype == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_amx() else torch.float32


def model_kind(path: Path) -> str:
    """`decoder`, `classifier` or `embedder`, from danlu.json's task or the config's architecture."""
    task = read_manifest(path).get("task")
    if task == "classify":
        return "classifier"
    if task in ("causal-lm", "clm", "pretrain", "generate"):
        return "decoder"
    config = json.loads((path / "config.json").read_text()) if (path / "config.json").exists() else {}
    architectures = config.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "classifier"
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return "decoder"
    if (path / "adapter_config.json").exists():
        return "classifier"  # danlu's LoRA artifacts are classifiers; load_classifier merges them
    return "embedder"


def load_decoder(path: Path, dtype: torch.dtype, device: torch.device):
    """A causal LM and its tokenizer, in eval mode, cast to `dtype` on `device`.

    The weights are cast (never autocast: autocast re-casts every weight at every decode step)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_safe_weights(path)
    manifest = read_manifest(path)
    if manifest.get("task") not in (None, "causal-lm", "clm", "pretrain", "generate"):
        raise DanluError(f"{path} is a {manifest['task']!r} artifact, not a decoder")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, attn_implementation="sdpa")
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return model, tokenizer


def load_embedder(path: Path, dtype: torch.dtype, device: torch.device):
    """An encoder (e.g. MiniLM) for sentence embeddings, and its tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    check_safe_weights(path)
    model = AutoModel.from_pretrained(str(path), dtype=dtype)
    model.to(device).eval()
    return model, AutoTokenizer.from_pretrained(str(path))
