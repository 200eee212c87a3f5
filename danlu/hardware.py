"""What the hardware we run on is good at, decided at run time (never assumed).

The same danlu runs on CPUs with AMX/AVX512-BF16 (where bfloat16 is 4x faster than float32), on
AVX2-only CPUs (where torch emulates bfloat16 and a bf16 matmul is ~50x *slower* than float32:
measured 7.5 s vs 0.11 s for a 1024x1024 matmul on an AMD EPYC Zen 2), and on CUDA GPUs.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time


@functools.cache
def bf16_is_fast(device_type: str | None = None) -> bool:
    """Whether bfloat16 matmuls run natively on `device_type` (default: cuda if present, else cpu)."""
    import torch

    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda":
        # without including_emulation=False torch says yes on pre-Ampere GPUs (V100, T4), which only emulate it
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type == "cpu":
        cpu = getattr(torch, "cpu", None)
        checks = [getattr(cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
        return any(check() for check in checks if check is not None)
    return False


@functools.cache
def int8_engine() -> str:
    """The PyTorch quantized engine for dynamic int8 Linear on this CPU.

    oneDNN's int8 kernels need AMX or VNNI to shine (on an AMX CPU it ran dynamic int8 BERT ~1.4x faster
    than the x86 engine); without them (AVX2-only, e.g. AMD EPYC Zen 2) the x86 engine (FBGEMM) was
    faster: MiniLM-L6 at batch 1 10.3 ms vs 17.2 ms, at batch 32 135 vs 126 sequences/s."""
    import torch

    engines = torch.backends.quantized.supported_engines
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_amx_tile_supported", "_is_vnni_supported")]
    fast_onednn = any(check() for check in checks if check is not None)
    for engine in (("onednn", "x86", "fbgemm") if fast_onednn else ("x86", "fbgemm", "onednn")):
        if engine in engines:
            return engine
    return torch.backends.quantized.engine


def use_bf16(requested: bool, flag: str = "--bf16", device_type: str | None = None) -> bool:
    """`requested`, unless the hardware would only emulate bfloat16: then warn once and use float32."""
    import torch

    if not requested or bf16_is_fast(device_type):
        return requested
    _warn_once(f"warning: {flag} ignored: this {device_type or ('GPU' if torch.cuda.is_available() else 'CPU')} "
               "has no native bfloat16 (it needs AVX512-BF16 or AMX on a CPU), so bf16 would be emulated and "
               "far slower than float32; running in float32")
    return False


@functools.cache
def _warn_once(message: str) -> None:
    print(message, file=sys.stderr)


# ---- threads on a machine that others share ----------------------------------------------------------
# Measured with benchmarks/contention.py (2-core EPYC, one CPU hog beside the fine-tune): OpenMP threads
# that spin at barriers (the default, OMP_WAIT_POLICY=active) burn the CPU a descheduled sibling needs, and
# a thread per core when a core is taken makes every parallel region wait for the slowest thread. So danlu
# waits passively and runs one thread per CPU that is really free (affinity mask, cgroup quota, and what
# other processes use right now); --threads overrides the count, OMP_WAIT_POLICY in the environment the policy.


def configure_openmp() -> None:
    """Make OpenMP threads sleep instead of spin at barriers, unless the user chose a policy. Must run before
    torch is imported (the OpenMP runtime reads it once, when it loads): the CLI calls it first thing."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _cgroup_cpu_quota() -> float | None:
    """CPUs granted by a cgroup quota (v2 cpu.max, v1 cfs_quota_us), or None when unlimited."""
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read())
        period = int(open("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(cpus, math.floor(quota))) if quota else cpus


def free_time(fields: list[int], own_nice: int) -> tuple[int, int]:
    """(total, free) CPU time of one /proc/stat cpu line: free is idle + iowait, plus the time of niced
    processes (the `nice` column) when this process is not niced itself, since those yield to it."""
    total = sum(fields[:8])  # guest time is already counted in user time
    free = fields[3] + fields[4] + (fields[1] if own_nice <= 0 else 0)
    return total, free


def idle_share(window_s: float = 0.25) -> float:
    """The share of time the CPUs this process may use were free to it over the last `window_s` (per-CPU
    lines of /proc/stat): idle, or running niced work that yields to a process that is not niced (a
    background compile must not make danlu take one thread); 1 where unknown."""
    try:
        mine = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        own_nice = os.getpriority(os.PRIO_PROCESS, 0)
    except (AttributeError, OSError):
        return 1.0

    def sample() -> tuple[int, int]:
        total = free = 0
        with open("/proc/stat") as f:
            for line in f:
                name, *values = line.split()
                if name in mine:
                    t, i = free_time([int(x) for x in values], own_nice)
                    total, free = total + t, free + i
        return total, free

    try:
        total0, idle0 = sample()
        time.sleep(window_s)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return 1.0
    return (idle1 - idle0) / (total1 - total0) if total1 > total0 else 1.0


def choose_threads(requested: int = 0) -> int:
    """`requested` when given, else $OMP_NUM_THREADS, else one thread per available CPU that other
    processes leave free (at least one): on a busy machine fewer threads run faster than a thread per
    core waiting for a busy one."""
    if requested > 0:
        return requested
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])  # the user's (or torchrun's, one per process) choice
    cpus = available_cpus()
    return max(1, min(cpus, math.floor(cpus * idle_share() + 0.5)))


def set_threads(requested: int = 0) -> int:
    """Set torch's intra-op threads to `choose_threads(requested)` and return the number."""
    import torch

    threads = choose_threads(requested)
    torch.set_num_threads(threads)
    return threads
