"""Weight-only 4-bit linear layers with a step and an offset per group of 32 weights (llama.cpp's Q4_1 layout).

Each row of the weight is cut into groups of 32 along the input; a group stores `q = round((w - lo) / d)` in
0..15 (two per byte) with `d = (hi - lo) / 15` and `lo` its smallest weight, both as float16: 0.625 bytes per
weight against int8's 1 (plus its row scale). A SmolLM2-135M decode step then reads ~66 MB of layer
weights instead of ~106 MB. On CPU `Int4Linear` runs danlu's kernel (`danlu_q4_linear` in
danlu/kernels/w8_linear.cpp) which, as llama.cpp does, rounds each activation row to int8 per group of 32
(step max|x| / 127) and takes integer dot products with the 4-bit codes (AVX2 maddubs):
`sum_k x_k w_k ~= d * dx * (xq . q) + lo * sum(x)`. Each output row is computed independently of the rest of
the batch (decoding stays batch-invariant). Elsewhere (no kernel, CUDA) it dequantizes and uses torch's
float matmul, without the activation rounding.

SmolLM2-135M as packaged was converted from a Q4_1 GGUF file: its layer weights are exactly such groups,
so this format gives all 210 of them back bit for bit. Perplexity on the held-out wiki-sample slice: 36.00
(float32 35.52, int8 35.42; `benchmarks/smollm2_variants_perplexity.py --serve-only`): the rounding of the
activations costs 1.4%. At one activation row it is ~3x faster than the int8 kernel on SmolLM2's shapes,
at 16 to 64 rows 1.5-2x slower (the int8 kernel widens each weight once for many rows).
"""

from __future__ import annotations

import torch

from danlu.kernels.linear import KernelLinear

GROUP = 32


def quantize_groups(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(packed uint8 N x K/2, step float16 N x K/32, offset float16 N x K/32) for a float weight N x K."""
    n, k = weight.shape
    w = weight.detach().float().reshape(n, k // GROUP, GROUP)
    lo, hi = w.amin(-1), w.amax(-1)
    step, offset = ((hi - lo) / 15).half(), lo.half()
    d = step.float()[..., None]
    q = torch.where(d > 0, torch.round((w - offset.float()[..., None]) / d.clamp_min(1e-30)), 0).clamp(0, 15)
    q = q.to(torch.uint8)
    packed = q[..., :GROUP // 2] | (q[..., GROUP // 2:] << 4)
    return packed.reshape(n, k // 2).contiguous(), step.contiguous(), offset.contiguous()


def unpack(packed: torch.Tensor) -> torch.Tensor:
    """The 4-bit codes (uint8, N x K) of a packed weight."""
    n = packed.shape[0]
    groups = packed.reshape(n, -1, GROUP // 2)
    return torch.cat([groups & 0x0F, groups >> 4], dim=-1).reshape(n, -1)


class Int4Linear(KernelLinear):
    kernel = "danlu_q4_linear"
    weights = {"packed": torch.uint8, "step": torch.float16, "offset": torch.float16, "bias": torch.float32}
    multiple = GROUP
    label = "4-bit weights (groups of 32)"

    def __init__(self, packed: torch.Tensor, step: torch.Tensor, offset: torch.Tensor,
                 bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = packed.shape[0], packed.shape[1] * 2
        self.register_buffer("packed", packed.contiguous())
        self.register_buffer("step", step.contiguous())
        self.register_buffer("offset", offset.contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear) -> Int4Linear:
        packed, step, offset = quantize_groups(linear.weight)
        device = linear.weight.device
        return cls(packed.to(device), step.to(device), offset.to(device), linear.bias)

    def dequantized(self) -> torch.Tensor:
        """The float32 weight these codes, steps and offsets represent."""
        n, k = self.out_features, self.in_features
        q = unpack(self.packed).float().reshape(n, k // GROUP, GROUP)
        w = torch.addcmul(self.offset.float()[..., None], self.step.float()[..., None], q)
        return w.reshape(n, k)
