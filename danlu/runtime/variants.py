"""Rebuilding compressed variants on load: the storage formats of danlu's variants.

Most variants are plain `from_pretrained` folders (bf16, distilled). Some need a step on load that a
config cannot express, recorded under `load` in danlu.json (written by danlu/compress):
- `format: int8-dynamic`: linear weights stored as int8 + per-channel scales; rebuilt as PyTorch
  dynamic-quantized Linear modules.
- `resized`: pruned layers have fewer heads / neurons than the config says; each Linear is shaped
  after the checkpoint before loading.
- `shared_layers`: groups of encoder layers that are one module (ALBERT-style); stored once.
- `weight_only` (decoders): block Linears as int8 per channel or int4 per group; on CPU int8 runs on
  danlu's kernel (danlu/kernels), elsewhere on torchao.
"""

from __future__ import annotations

from pathlib import Path

import torch

from danlu.artifact import read_manifest
from danlu.kernels import kernel_error

INT8_SUFFIX, SCALE_SUFFIX = ".weight_int8", ".weight_scale"
INT4_GROUP = 32


def encoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of transformer layers of a BERT-like encoder; ValueError when there is none."""
    base = getattr(model, model.base_model_prefix, None)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(f"{type(model).__name__} is not a BERT-style encoder (no encoder.layer list)")
    return layers


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


def load_variant_model(path: str | Path, attn: str = "sdpa", head=None) -> torch.nn.Module:
    """A PyTorch encoder model from an artifact folder, applying the `load` recipe of danlu.json.

    `head` is the transformers auto class (default: the one the folder's architecture names)."""
    from safetensors.torch import load_file, load_model
    from transformers import AutoConfig

    from danlu.runtime.heads import auto_class

    path = Path(path)
    head = head or auto_class(path)
    recipe = read_manifest(path).get("load") or {}
    if not recipe:
        return head.from_pretrained(str(path), attn_implementation=attn).eval()
    config = AutoConfig.from_pretrained(str(path))
    config._attn_implementation = attn
    model = head.from_config(config).eval()
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


# ---- decoders -----------------------------------------------------------------------------------------


def _quantizable(model: torch.nn.Module) -> list[str]:
    """Linear layers of the transformer blocks (not the embedding / tied LM head)."""
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in f".{n}"]


def dequantized_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Float weights back from `quantized_state` (the exact values the quantized model represents)."""
    out = {}
    for key, value in state.items():
        if key.endswith(".qweight"):
            module = key[: -len(".qweight")]
            out[module + ".weight"] = value.float() * state[module + ".scale"][:, None]
        elif key.endswith(".qweight4"):
            module = key[: -len(".qweight4")]
            q = torch.stack([value & 15, value >> 4], dim=-1).view(value.shape[0], -1).float()
            scale, zero = state[module + ".scale"], state[module + ".zero"]
            groups = q.view(q.shape[0], -1, INT4_GROUP)
            out[module + ".weight"] = ((groups - zero[..., None]) * scale[..., None]).view(q.shape[0], -1)
        elif not key.endswith((".scale", ".zero")):
            out[key] = value
    return out


def apply_torchao(model: torch.nn.Module, method: str) -> torch.nn.Module:
    """Swap the block Linears' weights for torchao weight-only quantized tensors."""
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, MappingType, PerGroup, quantize_

    names = set(_quantizable(model))
    if method == "int8-weight-only":
        config = Int8WeightOnlyConfig()
    else:  # torchao's tinygemm/mslk int4 kernels need CUDA here; the intx path runs on any CPU
        config = IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(INT4_GROUP),
                                      mapping_type=MappingType.ASYMMETRIC)
    quantize_(model, config, filter_fn=lambda m, name: name in names)
    return model


def load_decoder_variant(path: str | Path, device: str | None = None) -> torch.nn.Module:
    """A causal LM from a danlu artifact (plain, bf16 or weight-only int8/int4), ready for generate()."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    recipe = read_manifest(path).get("load") or {}
    if not recipe.get("weight_only"):
        return AutoModelForCausalLM.from_pretrained(str(path), dtype="auto").to(device).eval()
    config = AutoConfig.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(dequantized_state(state), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"{path}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    if recipe["weight_only"] == "int8-weight-only" and str(device) == "cpu" and kernel_error() is None:
        return _int8_kernel_layers(model.eval(), state)
    return apply_torchao(model.to(device).eval(), recipe["weight_only"])


def _int8_kernel_layers(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Swap the block Linears for danlu's `Int8Linear` on the stored int8 weights and scales (the same
    values torchao would hold; danlu's AVX2 kernel runs them several times faster on CPU)."""
    from danlu.kernels.int8 import Int8Linear

    for name in _quantizable(model):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        bias = getattr(parent, child).bias
        setattr(parent, child, Int8Linear(state[name + ".qweight"], state[name + ".scale"], bias))
    return model
