"""Write a compressed variant as a normal danlu artifact, and rebuild it on load.

Most variants are plain `from_pretrained` folders (bf16, distilled). Three need a step on load that a
config cannot express, recorded under `load` in danlu.json and applied by `load_variant_model`
(which `danlu evaluate`/`predict` call through `load_classifier`):
- `int8-dynamic`: linear weights are stored as int8 tensors with per-channel scales in safetensors
  (so the size on disk really is int8); the loader rebuilds PyTorch dynamic-quantized Linear modules.
- `resized`: pruned layers have fewer heads / neurons than the config says; the loader shapes each
  Linear after the checkpoint before loading it.
- `shared_layers`: groups of encoder layers that are one module (ALBERT-style); stored once.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from danlu.artifact import atomic_dir, read_manifest, write_manifest
from danlu.compress.job import CompressJob, NotApplicable
from danlu.runtime.variants import (INT8_SUFFIX, SCALE_SUFFIX, load_variant_model, rebuild_int8_dynamic,  # noqa: F401
                                    resize_linears, select_quantized_engine, tie_layers)
from danlu.runtime.variants import encoder_layers as _encoder_layers


def load_parent(job: CompressJob, attn: str = "sdpa"):
    """The parent classifier in fp32 (eval mode) and its tokenizer."""
    from transformers import AutoTokenizer

    model = load_variant_model(job.parent, attn=attn)
    if not any(p.dtype == torch.float32 for p in model.parameters()):
        raise NotApplicable("the parent is not an fp32 PyTorch model")
    return model.float().eval(), AutoTokenizer.from_pretrained(str(job.parent))


def encoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of transformer layers of a BERT-like encoder, or NotApplicable."""
    try:
        return _encoder_layers(model)
    except ValueError as e:
        raise NotApplicable(str(e)) from None


def write_variant(job: CompressJob, method: str, save, *, load: dict[str, Any] | None = None,
                  notes: str = "", info: dict[str, Any] | None = None) -> Path:
    """Write job.out atomically: `save(folder)` writes weights+config; tokenizer and danlu.json added."""
    parent = read_manifest(job.parent)
    with atomic_dir(job.out, overwrite=True) as tmp:  # inside OUT/variants, danlu's own
        save(tmp)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            if (job.parent / name).exists() and not (tmp / name).exists():
                shutil.copy(job.parent / name, tmp / name)
        write_manifest(tmp, task=parent.get("task", "classify"), stage="compress",
                       args={**parent.get("args", {}), "compress": {"method": method, **job.options}},
                       parent=str(job.parent), labels=job.labels,
                       data_fingerprint=parent.get("data_fingerprint"), data=parent.get("data"),
                       method=method, load=load or {}, notes=notes, compress_info=info or {},
                       base_model=parent.get("base_model", str(job.parent)))
    return job.out


# ---- int8 dynamic: storage and rebuild ------------------------------------------------------------


def int8_state(model: torch.nn.Module, embeddings: bool = True) -> dict[str, torch.Tensor]:
    """The state dict with every nn.Linear weight (and the word embeddings) as int8 + fp32 scales.

    Symmetric per-output-channel (per-row for embeddings) quantization: w ~= int8 * scale."""
    linear = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    emb = {name for name, m in model.named_modules()
           if isinstance(m, torch.nn.Embedding) and name.endswith("word_embeddings")} if embeddings else set()
    state = {}
    for key, value in model.state_dict().items():
        module, _, leaf = key.rpartition(".")
        if leaf == "weight" and (module in linear or module in emb):
            w = value.detach().float()
            scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
            state[module + INT8_SUFFIX] = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
            state[module + SCALE_SUFFIX] = scale.contiguous()
        else:
            state[key] = value.detach().contiguous()
    return state
