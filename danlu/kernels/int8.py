"""Weight-only int8 linear layers: one int8 per weight, one float32 scale per output row.

`Int8Linear` replaces an `nn.Linear` whose weight is stored as `round(w / scale)` with
`scale = max|w_row| / 127` (the same scheme as `danlu compress`'s int8-weight-only variant). On CPU it
runs danlu's AVX2 kernel (danlu/kernels/w8_linear.cpp), which computes each output row independently
of the rest of the batch; elsewhere (CUDA, or no kernel) it dequantizes and uses torch's matmul.
"""

from __future__ import annotations

import torch

from danlu.kernels.linear import KernelLinear


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, float32 scale per row) with weight ~= qweight * scale[:, None]."""
    w = weight.detach().float()
    scale = (w.abs().amax(1) / 127).clamp_min(1e-12)
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous(), scale.contiguous()


class Int8Linear(KernelLinear):
    kernel = "danlu_w8_linear"
    weights = {"qweight": torch.int8, "scale": torch.float32, "bias": torch.float32}
    label = "int8 weights"

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("scale", scale.float().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear) -> Int8Linear:
        qweight, scale = quantize_rows(linear.weight)
        return cls(qweight.to(linear.weight.device), scale.to(linear.weight.device), linear.bias)

    def dequantized(self) -> torch.Tensor:
        """The float32 weight these int8 values and scales represent."""
        return self.qweight.float() * self.scale[:, None]


def quantize_linears(model: torch.nn.Module, names: set[str] | None = None, head: bool = True,
                     bits: int = 8) -> int:
    """Replace `model`'s `nn.Linear`s (those in `names`, default all; the output head only if `head`) by
    `Int8Linear`s in place, or with `bits=4` by `Int4Linear`s (the output head and layers whose width is
    not a multiple of 32 stay int8, as llama.cpp's Q4_1 files keep the head in Q8_0); returns how many.
    A head tied to the input embeddings is untied: the embedding table keeps its float weights for the
    lookup."""
    from danlu.kernels.int4 import GROUP, Int4Linear

    get_head = getattr(model, "get_output_embeddings", None)
    output_head = get_head() if get_head else None
    swaps = []
    for name, module in model.named_modules():
        for child_name, child in module.named_children():
            full = f"{name}.{child_name}" if name else child_name
            if type(child) is not torch.nn.Linear or (names is not None and full not in names):
                continue
            if child is output_head and not head:
                continue
            swaps.append((module, child_name, child))
    for parent, child_name, child in swaps:
        four = bits == 4 and child is not output_head and child.in_features % GROUP == 0
        setattr(parent, child_name, (Int4Linear if four else Int8Linear).from_linear(child))
    if head and output_head is not None and any(child is output_head for _, _, child in swaps):
        # keep transformers from re-tying (it would put a float weight back on a module without one)
        model.config.tie_word_embeddings = False
    return len(swaps)
