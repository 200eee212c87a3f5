"""danlu's own CPU kernels, compiled on first use with the system C++ compiler.

`w8_linear.cpp` holds weight-only int8 and 4-bit linear layers for AVX2+FMA+F16C CPUs (`Int8Linear`,
`Int4Linear`). It is built once
per machine into danlu's cache folder (`$DANLU_HOME/kernels/`, about a second with g++) and loaded with
ctypes; it links the OpenMP runtime torch already loaded, so it shares torch's threads instead of
fighting them. Where it cannot be built (no compiler, no AVX2), `Int8Linear` and `Int4Linear` compute the
same product with torch (dequantize, then matmul) and `kernel_error()` says why.

`benchmarks/int8_linear_kernel.py` measures it against float32 MKL and torch's own weight-only int8 kernel
(`torch._weight_int8pack_mm`) on SmolLM2-135M's shapes, weights streamed from memory as in a decode step.
On a 2-core AMD EPYC (Zen 2, AVX2): 2.3-4.5x float32 at 1 row, 1.4-2.1x at 16, 1.2-1.4x at 64, 1.06-1.13x at
256 (against the faster of `F.linear` and `W @ x.T`); torch's int8 kernel is 4-6x slower than it at 1 row and
~30x at 16 (`benchmarks/results/int8_linear_kernel.json`).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from danlu.assets import danlu_home

SOURCE = Path(__file__).with_name("w8_linear.cpp")
FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-fPIC", "-shared"]


class KernelUnavailable(RuntimeError):
    """The C++ kernel cannot run here; the message says why."""


def _cpu_has_avx2_fma_f16c() -> bool:
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return False
    return {"avx2", "fma", "f16c"} <= set(flags.split(":", 1)[-1].split())


def _build(target: Path) -> None:
    """Compile SOURCE into `target` (a temporary file renamed into place, so a crash leaves nothing half-built)."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not compiler:
        raise KernelUnavailable("no C++ compiler found (install g++ or set CXX)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        try:
            result = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True)
        except OSError as error:
            raise KernelUnavailable(f"C++ compiler {compiler!r} cannot run: {error.strerror or error}") from None
        if result.returncode != 0:
            raise KernelUnavailable(f"{compiler} failed to build {SOURCE.name}: {result.stderr.strip()[-400:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def _library() -> ctypes.CDLL | str:
    """The loaded kernel library, or the reason it is unavailable."""
    if os.environ.get("DANLU_NO_KERNELS"):
        return "disabled by DANLU_NO_KERNELS"
    if not _cpu_has_avx2_fma_f16c():
        return "this CPU lacks AVX2/FMA/F16C"
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()).hexdigest()[:16]
    target = danlu_home() / "kernels" / f"w8_linear-{key}.so"
    try:
        if not target.exists():
            _build(target)
        library = ctypes.CDLL(str(target))
    except (KernelUnavailable, OSError) as error:
        return str(error)
    for function, pointers in ((library.danlu_w8_linear, 5), (library.danlu_q4_linear, 6)):
        function.restype = ctypes.c_int
        function.argtypes = [ctypes.c_void_p] * pointers + [ctypes.c_int] * 4
    library.danlu_add_rms_norm.restype = ctypes.c_int
    library.danlu_add_rms_norm.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int,
                                                                     ctypes.c_int]
    return library


def kernel_error() -> str | None:
    """Why the int8 kernel is unavailable here, or None when it is ready."""
    library = _library()
    return library if isinstance(library, str) else None


def kernel_function(name: str = "danlu_w8_linear"):
    """The C function `name` (`danlu_w8_linear`, `danlu_q4_linear` or `danlu_add_rms_norm`, argument types
    set), or None where the kernels are unavailable."""
    library = _library()
    return None if isinstance(library, str) else getattr(library, name)


STATUS = {1: "K must be a multiple of 8 (int8) or 32 (4-bit)", 2: "out of memory for its scratch buffer"}


def run_kernel(function, x: torch.Tensor, weights: tuple, out_features: int) -> torch.Tensor:
    """Call `function` (from `kernel_function`) on float32 CPU `x` of any leading shape, with `weights` the
    addresses its arguments between x and out take (weight, its scales, the bias or None)."""
    if not x.is_contiguous():
        x = x.contiguous()
    k = x.shape[-1]
    out = x.new_empty(x.shape[:-1] + (out_features,))
    status = function(x.data_ptr(), *weights, out.data_ptr(), x.numel() // k, out_features, k,
                      torch.get_num_threads())
    if status:
        raise KernelUnavailable(f"{function.__name__} returned {status}: {STATUS.get(status, 'unknown error')} (K={k})")
    return out


def w8_linear(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`x @ (qweight * scale[:, None]).T + bias` with the C++ kernel; x float32 on CPU, any leading shape."""
    function = kernel_function()
    if function is None:
        raise KernelUnavailable(kernel_error())
    return run_kernel(function, x, (qweight.data_ptr(), scale.data_ptr(), None if bias is None else bias.data_ptr()),
                      qweight.shape[0])


def q4_linear(x: torch.Tensor, packed: torch.Tensor, step: torch.Tensor, offset: torch.Tensor,
              bias: torch.Tensor | None) -> torch.Tensor:
    """`x @ W.T + bias` with W the 4-bit weight `packed` (uint8, N x K/2), `step` and `offset` (float16, N x K/32)
    describe (see `danlu.kernels.int4`), with the C++ kernel; x float32 on CPU, any leading shape."""
    function = kernel_function("danlu_q4_linear")
    if function is None:
        raise KernelUnavailable(kernel_error())
    return run_kernel(function, x, (packed.data_ptr(), step.data_ptr(), offset.data_ptr(),
                                    None if bias is None else bias.data_ptr()), packed.shape[0])
