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

INT8_SUFFIX, SCALE_SUFFIX = ".weight_int8", ".weight_scale"


def load_parent(job: CompressJob, attn: str = "sdpa"):
    """The parent classifier in fp32 (eval mode) and its tokenizer."""
    from transformers import AutoTokenizer

    model = load_variant_model(job.parent, attn=attn)
    if not any(p.dtype == torch.float32 for p in model.parameters()):
        raise NotApplicable("the parent is not an fp32 PyTorch model")
    return model.float().eval(), AutoTokenizer.from_pretrained(str(job.parent))


def encoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of transformer layers of a BERT-like encoder, or NotApplicable."""
    base = getattr(model, model.base_model_prefix, None)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise NotApplicable(f"{type(model).__name__} is not a BERT-style encoder (no encoder.layer list)")
    return layers


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


def rebuild_int8_dynamic(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Load an `int8_state` into a float model: embeddings de-quantised, Linears as dynamic int8."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    floats = {}
    for key, value in state.items():
        if key.endswith(INT8_SUFFIX):
            module = key[: -len(INT8_SUFFIX)]
            floats[module + ".weight"] = value.float() * state[module + SCALE_SUFFIX][:, None]
        elif not key.endswith(SCALE_SUFFIX):
            floats[key] = value
    resize_linears(model, floats)  # a pruned parent's layers are narrower than its config says
    model.load_state_dict(floats, strict=False)
    select_quantized_engine()
    model = quantize_dynamic(model.eval(), {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    for name, module in model.named_modules():
        if isinstance(module, DynamicLinear) and name + INT8_SUFFIX in state:
            scale = state[name + SCALE_SUFFIX].double()
            qweight = torch._make_per_channel_quantized_tensor(
                state[name + INT8_SUFFIX], scale, torch.zeros_like(scale, dtype=torch.long), 0)
            module.set_weight_bias(qweight, module.bias())
    return model


def select_quantized_engine() -> None:
    """The quantized engine this CPU runs dynamic int8 fastest on (danlu.hardware.int8_engine)."""
    from danlu.hardware import int8_engine

    torch.backends.quantized.engine = int8_engine()


# ---- loading any variant ----------------------------------------------------------------------------


def load_variant_model(path: str | Path, attn: str = "sdpa") -> torch.nn.Module:
    """A PyTorch classifier from an artifact folder, applying the `load` recipe of danlu.json."""
    from safetensors.torch import load_file, load_model
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = Path(path)
    recipe = read_manifest(path).get("load") or {}
    if not recipe:
        return AutoModelForSequenceClassification.from_pretrained(str(path), attn_implementation=attn).eval()
    config = AutoConfig.from_pretrained(str(path))
    config._attn_implementation = attn
    model = AutoModelForSequenceClassification.from_config(config).eval()
    weights = path / "model.safetensors"
    if recipe.get("format") == "int8-dynamic":
        return rebuild_int8_dynamic(model, load_file(str(weights)))
    if recipe.get("resized"):
        resize_linears(model, load_file(str(weights)))
    if recipe.get("shared_layers"):
        tie_layers(model, recipe["shared_layers"])
    load_model(model, str(weights), strict=True)
    return model.to(getattr(torch, recipe.get("dtype", "float32"))).eval()


def resize_linears(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Replace each nn.Linear whose checkpoint weight has another shape by one of that shape."""
    for name, module in list(model.named_modules()):
        weight = state.get(name + ".weight")
        if isinstance(module, torch.nn.Linear) and weight is not None and weight.shape != module.weight.shape:
            parent_name, _, leaf = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, leaf, torch.nn.Linear(weight.shape[1], weight.shape[0], bias=module.bias is not None))


def tie_layers(model: torch.nn.Module, groups: list[list[int]]) -> None:
    """Make every layer of a group the same module as the group's first (cross-layer sharing)."""
    layers = encoder_layers(model)
    for group in groups:
        for index in group[1:]:
            layers[index] = layers[group[0]]
