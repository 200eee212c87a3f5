"""What danlu decides about the hardware: bfloat16 only where it is computed natively."""

import types

import pytest
import torch

from danlu import hardware


@pytest.fixture
def fresh_cache():
    hardware.bf16_is_fast.cache_clear()
    yield
    hardware.bf16_is_fast.cache_clear()


@pytest.mark.parametrize("major, native", [(7, False), (8, True), (9, True)])
def test_cuda_bf16_only_from_ampere_on(monkeypatch, fresh_cache, major, native):
    # a V100 or T4 (compute capability 7.x) can hold bfloat16 tensors, so torch's default check says yes
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: types.SimpleNamespace(major=major))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)
    assert hardware.bf16_is_fast("cuda") is native


def test_threads_follow_the_flag_then_the_environment_then_the_free_cpus(monkeypatch):
    """Finding 9 of issue 19: a thread per core on a busy machine collapses; danlu counts the CPUs it may
    really use (affinity mask, cgroup quota) and those other processes leave free."""
    import os

    assert hardware.choose_threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert hardware.choose_threads() == 5
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(hardware, "available_cpus", lambda: 4)
    monkeypatch.setattr(hardware, "idle_share", lambda: 1.0)
    assert hardware.choose_threads() == 4
    monkeypatch.setattr(hardware, "idle_share", lambda: 0.5)  # half the machine busy: half the threads
    assert hardware.choose_threads() == 2
    monkeypatch.setattr(hardware, "idle_share", lambda: 0.0)
    assert hardware.choose_threads() == 1
    monkeypatch.undo()
    assert 1 <= hardware.available_cpus() <= len(os.sched_getaffinity(0))
    assert 0.0 <= hardware.idle_share(0.05) <= 1.0


def test_niced_work_counts_as_free_for_a_process_that_is_not_niced():
    """A niced background job (a compile, a helper's tests) yields its CPU to danlu, so it must not make
    danlu drop to one thread; to a niced danlu it is busy time like any other."""
    # /proc/stat columns: user nice system idle iowait irq softirq steal
    fields = [100, 600, 50, 200, 50, 0, 0, 0]
    assert hardware.free_time(fields, own_nice=0) == (1000, 850)
    assert hardware.free_time(fields, own_nice=10) == (1000, 250)


def test_the_cli_makes_openmp_wait_passively_unless_told_otherwise():
    import subprocess
    import sys

    code = ("import os; os.environ.pop('OMP_WAIT_POLICY', None); from danlu.cli import main; main([]); "
            "import torch; print(os.environ['OMP_WAIT_POLICY'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "PASSIVE"
    code = code.replace("os.environ.pop('OMP_WAIT_POLICY', None)", "os.environ['OMP_WAIT_POLICY'] = 'ACTIVE'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "ACTIVE"
