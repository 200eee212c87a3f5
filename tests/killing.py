"""Kill a real training run with SIGKILL once it has written a checkpoint (shared by the resume tests)."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path


def losses(path: Path) -> dict[int, float]:
    """Training loss per optimizer step, from a metrics.jsonl."""
    return {e["step"]: e["loss"] for e in map(json.loads, path.read_text().splitlines()) if "loss" in e}


def kill_after_first_checkpoint(cmd: list[str], out: Path, env: dict, last_step: int) -> tuple[list[str], int]:
    """Start `cmd` (a run writing the artifact `out`), SIGKILL it as soon as a checkpoint is complete, and
    check that nothing half-written was left. Returns the complete checkpoints' names and the step of the last."""
    checkpoints = out.parent / f"{out.name}.run" / "checkpoints"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not any(checkpoints.glob("step-*/train_state.json")):
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # no half-written artifact
    saved = sorted(p.name for p in checkpoints.glob("step-*") if (p / "train_state.json").exists())
    assert saved and saved[-1] != f"step-{last_step:07d}", "the run finished before it could be killed"
    return saved, int(saved[-1].split("-")[1])
