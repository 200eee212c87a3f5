"""A fine-tuning run killed with SIGKILL resumes from its last checkpoint and continues exactly."""

import json
import os
import subprocess
import sys

import pytest
from killing import kill_after_first_checkpoint, losses

ARGS = ["--max-steps", "24", "--batch-size", "8", "--lr", "1e-3", "--log-every", "1", "--save-every", "3",
        "--eval-every", "6", "--keep-checkpoints", "2", "--max-length", "32"]


def finetune(tiny_bert, data, out, *extra):
    return [sys.executable, "-m", "danlu", "finetune", "--model", str(tiny_bert), "--data", str(data),
            "--out", str(out), *ARGS, *extra]


def test_sigkilled_run_resumes_exactly(tiny_bert, sentiment_csv, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same threads in all three runs: same numbers
    full = tmp_path / "full"
    r = subprocess.run(finetune(tiny_bert, sentiment_csv, full), capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]

    out = tmp_path / "killed"
    _, killed_at = kill_after_first_checkpoint(finetune(tiny_bert, sentiment_csv, out), out, env, last_step=24)

    # Resuming with other arguments is refused, naming the difference, and loses nothing.
    r = subprocess.run(finetune(tiny_bert, sentiment_csv, out, "--resume", "--lr", "2e-3"), capture_output=True,
                       text=True, env=env)
    assert r.returncode == 2 and "different configuration" in r.stderr and "lr: checkpoint 0.001 vs now 0.002" in r.stderr
    assert "Traceback" not in r.stderr

    r = subprocess.run(finetune(tiny_bert, sentiment_csv, out, "--resume"), capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming from" in r.stderr + r.stdout
    expected, got = losses(full / "metrics.jsonl"), losses(out / "metrics.jsonl")
    assert sorted(got) == list(range(1, 25))  # the whole curve, no step twice
    after = [s for s in got if s > killed_at]
    assert after
    assert [got[s] for s in after] == pytest.approx([expected[s] for s in after], rel=1e-6, abs=1e-7)
    a = json.loads((full / "danlu.json").read_text())["metrics"]
    b = json.loads((out / "danlu.json").read_text())["metrics"]
    assert b["best_step"] == a["best_step"] and b["test"]["accuracy"] == a["test"]["accuracy"]

