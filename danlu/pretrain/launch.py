"""`--nproc N`: start N training processes of the same command with torch.distributed's launcher
(torchrun). Each process finds its rank in the environment; accelerate then joins the process group
(gloo on CPU, nccl on GPU)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from danlu.config import flag_name
from danlu.errors import DanluError


def to_argv(obj) -> list[str]:
    """The command-line flags that rebuild a (nested) argument dataclass."""
    argv: list[str] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            argv += to_argv(value)
        elif value is None:
            continue
        elif isinstance(value, bool):
            argv.append(flag_name(f) if value else "--no-" + flag_name(f)[2:])
        else:
            argv += [flag_name(f), str(value)]
    return argv


def launch(args) -> Path:
    """Run `danlu pretrain` with args.nproc processes on this machine; return the artifact path."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
           "-m", "danlu", "pretrain", *to_argv(args)]
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:  # share the cores rather than oversubscribe them
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.nproc))
    print(f"launching {args.nproc} processes: {' '.join(cmd[1:6])} ...", file=sys.stderr, flush=True)
    code = subprocess.run(cmd, env=env).returncode
    if code != 0:
        raise DanluError(f"a training process failed (exit code {code}); its messages are above")
    return Path(args.out)
