"""The compression methods `danlu compress` knows: name -> function, what `all` tries, and `--methods` parsing."""

from __future__ import annotations

from danlu.errors import DanluError, did_you_mean

# name -> (module, function); imported only when the method runs.
METHODS = {
    "bf16": ("danlu.compress.quantize", "bf16"),
    "int8-dynamic": ("danlu.compress.quantize", "int8_dynamic"),
    "int8-static": ("danlu.compress.quantize", "int8_static"),
    "int8-weight-only": ("danlu.compress.quantize", "weight_only"),
    "int4-weight-only": ("danlu.compress.quantize", "weight_only"),
    "onnx": ("danlu.compress.quantize", "onnx_fp32"),
    "onnx-int8": ("danlu.compress.quantize", "onnx_int8"),
    "prune-structured": ("danlu.compress.prune", "prune_structured"),
    "prune-magnitude": ("danlu.compress.prune", "prune_magnitude"),
    "distill": ("danlu.compress.distill", "distill"),
    "share-layers": ("danlu.compress.share", "share_layers"),
}
# What `--methods all` tries for a classifier, in order (cheap ones first: their rows appear soonest).
# The pruned model with int8 on top was the fastest variant within a 1-point budget on an AVX2 CPU.
ALL = ["bf16", "int8-dynamic", "int8-static", "onnx", "onnx-int8", "int8-weight-only", "int4-weight-only",
       "prune-magnitude", "prune-structured", "prune-structured+int8-dynamic", "prune-structured+onnx-int8",
       "distill", "distill+int8-dynamic", "distill+onnx-int8", "share-layers"]


def expand_methods(names: list[str]) -> list[str]:
    """`all` and comma lists expanded; each `A+B` part checked against the known methods."""
    methods: list[str] = []
    for item in names:
        for name in (n.strip() for n in item.split(",")):
            if not name:
                continue
            if name == "all":
                methods += ALL
                continue
            for part in name.split("+"):
                if part not in METHODS:
                    raise DanluError(f"--methods: unknown method {part!r}{did_you_mean(part, list(METHODS))}")
            methods.append(name)
    return list(dict.fromkeys(methods))
