"""Weight-only int8 linear layers: one int8 per weight, one float32 scale per output row.

`Int8Linear` replaces an `nn.Linear` whose weight is stored as `round(w / scale)` with
`scale = max|w_row| / 127` (the same scheme as `danlu compress`'s int8-weight-only variant). On CPU it
runs danlu's AVX2 kernel (danlu/kernels/w8_linear.cpp), which computes each output row independently
of the rest of the batch; elsewhere (CUDA, or no kernel) it dequantizes and uses torch's matmul.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from danlu.kernels import kernel_error, kernel_function, run_kernel


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, float32 scale per row) with weight ~= qweight * scale[:, None]."""
    w = weight.detach().float()
    scale = (w.abs().amax(1) / 127).clamp_min(1e-12)
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous(), scale.contiguous()


class KernelLinear(torch.nn.Module):
    """A linear layer whose weight is stored quantized in buffers and multiplied by one of danlu's C++ kernels
    on CPU (float32 input); elsewhere it dequantizes and uses torch's matmul. Subclasses name the kernel, the
    buffers it takes in order (`weights`, the bias last) with their dtypes, and how to dequantize."""

    kernel = ""
    weights: dict[str, torch.dtype] = {}
    multiple = 8  # in_features the kernel needs a multiple of
    label = ""

    def dequantized(self) -> torch.Tensor:
        raise NotImplementedError

    def _kernel_call(self) -> tuple | None:
        """(C function, buffer addresses), looked up once: a decode step makes ~200 of these calls, and the
        plain Python path costs ~24 us per call against ~10 us for this one."""
        call = self.__dict__.get("_call", False)
        if call is False:
            fn = kernel_function(self.kernel)
            tensors = [getattr(self, name) for name in self.weights]
            ok = fn is not None and self.in_features % self.multiple == 0 and all(
                t is None or (t.device.type == "cpu" and t.dtype == dtype and t.is_contiguous())
                for t, dtype in zip(tensors, self.weights.values()))
            call = (fn, tuple(None if t is None else t.data_ptr() for t in tensors)) if ok else None
            self.__dict__["_call"] = call
        return call

    def _apply(self, fn, recurse=True):
        self.__dict__.pop("_call", None)  # the buffers may move or change type: look them up again
        return super()._apply(fn, recurse)

    def __setattr__(self, name: str, value) -> None:
        if name in self.weights:
            self.__dict__.pop("_call", None)  # new tensors, new addresses
        super().__setattr__(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        call = self._kernel_call()
        if call is not None and x.device.type == "cpu" and x.dtype == torch.float32 and not x.requires_grad:
            return run_kernel(call[0], x, call[1], self.out_features)
        weight = self.dequantized().to(x.dtype)
        return F.linear(x, weight, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.label}, " \
               f"kernel={'cpu-avx2' if kernel_error() is None else 'torch'}"


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
