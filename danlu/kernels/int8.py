"""Weight-only int8 linear layers: one int8 per weight, one float32 scale per output row.

`Int8Linear` replaces an `nn.Linear` whose weight is stored as `round(w / scale)` with
`scale = max|w_row| / 127` (the same scheme as `danlu compress`'s int8-weight-only variant). On CPU it
runs danlu's AVX2 kernel (danlu/kernels/w8_linear.cpp), which computes each output row independently
of the rest of the batch; elsewhere (CUDA, or no kernel) it dequantizes and uses torch's matmul.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from danlu.kernels import kernel_error, kernel_function, run_w8


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, float32 scale per row) with weight ~= qweight * scale[:, None]."""
    w = weight.detach().float()
    scale = (w.abs().amax(1) / 127).clamp_min(1e-12)
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous(), scale.contiguous()


class Int8Linear(torch.nn.Module):
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

    def _kernel_call(self) -> tuple | None:
        """(C function, weight, scale and bias addresses), looked up once: a decode step makes ~200 of
        these calls, and the plain Python path costs ~24 us per call against ~10 us for this one."""
        call = self.__dict__.get("_call", False)
        if call is False:
            fn = kernel_function()
            ok = (fn is not None and self.in_features % 8 == 0 and self.qweight.device.type == "cpu"
                  and self.qweight.dtype == torch.int8 and self.scale.dtype == torch.float32
                  and self.qweight.is_contiguous() and self.scale.is_contiguous()
                  and (self.bias is None or (self.bias.dtype == torch.float32 and self.bias.is_contiguous())))
            call = (fn, self.qweight.data_ptr(), self.scale.data_ptr(),
                    None if self.bias is None else self.bias.data_ptr()) if ok else None
            self.__dict__["_call"] = call
        return call

    def _apply(self, fn, recurse=True):
        self.__dict__.pop("_call", None)  # the buffers may move or change type: look them up again
        return super()._apply(fn, recurse)

    def __setattr__(self, name: str, value) -> None:
        if name in ("qweight", "scale", "bias"):
            self.__dict__.pop("_call", None)  # new tensors, new addresses
        super().__setattr__(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        call = self._kernel_call()
        if call is not None and x.device.type == "cpu" and x.dtype == torch.float32 and not x.requires_grad:
            function, weight, scale, bias = call
            return run_w8(function, x, weight, scale, bias, self.out_features)
        weight = self.dequantized().to(x.dtype)
        return F.linear(x, weight, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights, " \
               f"kernel={'cpu-avx2' if kernel_error() is None else 'torch'}"


def quantize_linears(model: torch.nn.Module, names: set[str] | None = None, head: bool = True) -> int:
    """Replace `model`'s `nn.Linear`s (those in `names`, default all; the output head only if `head`) by
    `Int8Linear`s in place; returns how many. A head tied to the input embeddings is untied: the
    embedding table keeps its float weights for the lookup."""
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
        setattr(parent, child_name, Int8Linear.from_linear(child))
    if head and output_head is not None and any(child is output_head for _, _, child in swaps):
        # keep transformers from re-tying (it would put a float weight back on a module without one)
        model.config.tie_word_embeddings = False
    return len(swaps)
