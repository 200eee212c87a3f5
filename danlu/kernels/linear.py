"""The base of danlu's quantized linear layers (`Int8Linear`, `Int4Linear`): buffers handed to a C++ kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from danlu.kernels import kernel_error, kernel_function, run_kernel


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
