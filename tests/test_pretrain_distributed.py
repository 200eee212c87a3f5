"""Pretraining as real processes: a SIGKILLed run resumes exactly, and `--nproc 2` (torch.distributed,
gloo on CPU) follows the 1-process loss curve with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
from killing import kill_after_first_checkpoint, losses

ARGS = ["--seq-len", "32", "--batch-size", "8", "--lr", "2e-3", "--log-every", "1", "--eval-every", "10",
        "--eval-sequences", "8"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads in every run: the same numbers


def pretrain(prepared, out, *extra):
    return [sys.executable, "-m", "danlu", "pretrain", "--data", str(prepared), "--out", str(out), *ARGS, *extra]


def test_sigkilled_pretraining_resumes_exactly(prepared, tmp_path):
    extra = ["--objective", "mlm+nsp", "--max-steps", "30", "--save-every", "3", "--keep-checkpoints", "2"]
    full = tmp_path / "full"
    r = subprocess.run(pretrain(prepared, full, *extra), capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]

    out = tmp_path / "killed"
    saved, killed_at = kill_after_first_checkpoint(pretrain(prepared, out, *extra), out, ENV, last_step=30)
    assert len(saved) <= 2  # only the last --keep-checkpoints are kept

    r = subprocess.run(pretrain(prepared, out, *extra, "--resume"), capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming from" in r.stderr + r.stdout
    expected, got = losses(full / "metrics.jsonl"), losses(out / "metrics.jsonl")
    assert sorted(got) == list(range(1, 31))  # the whole curve, no step twice
    after = [s for s in got if s > killed_at]
    assert after
    assert [got[s] for s in after] == pytest.approx([expected[s] for s in after], rel=1e-6, abs=1e-7)
    a = json.loads((full / "danlu.json").read_text())["metrics"]["validation"]
    b = json.loads((out / "danlu.json").read_text())["metrics"]["validation"]
    assert b == pytest.approx(a, rel=1e-6)


def test_two_processes_follow_the_one_process_curve(prepared, tmp_path):
    """Tolerance: 1e-4 relative. The 2-process run sums gradients in another order (all-reduce), so the
    numbers differ in the last float32 bits and drift a little through Adam; the batches, masks and
    learning rates are the same."""
    extra = ["--objective", "mlm", "--max-steps", "8", "--save-every", "4"]
    one = tmp_path / "one"
    r = subprocess.run(pretrain(prepared, one, *extra), capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    two = tmp_path / "two"
    r = subprocess.run(pretrain(prepared, two, *extra, "--nproc", "2"), capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "launching 2 processes (torch.distributed, gloo)" in r.stderr
    manifest = json.loads((two / "danlu.json").read_text())
    assert manifest["args"]["nproc"] == 2
    expected, got = losses(one / "metrics.jsonl"), losses(two / "metrics.jsonl")
    assert sorted(got) == list(range(1, 9))
    assert [got[s] for s in sorted(got)] == pytest.approx([expected[s] for s in sorted(expected)], rel=1e-4)
    assert got[8] < got[1]  # and it trains
