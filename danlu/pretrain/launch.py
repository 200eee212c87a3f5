"""`--nproc N`: start N training processes of the same command with torch.distributed's elastic
launcher (what torchrun runs). Each process finds its rank in the environment; accelerate then joins
the process group (gloo on CPU, nccl on GPU)."""

from __future__ import annotations

import dataclasses
import os
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
        elif isinstance(value, list):  # nargs flags (e.g. --report-to tensorboard mlflow), none when empty
            argv += [flag_name(f), *map(str, value)] if value else []
        else:
            argv += [flag_name(f), str(value)]
    return argv


def launch(args) -> Path:
    """Run `danlu pretrain` with args.nproc processes on this machine; return the artifact path.

    This is what `torchrun --standalone --nproc-per-node N -m danlu pretrain ...` does, called as a
    library so that no training flag can be mistaken for one of torchrun's (its parser would take
    `--nproc` for an abbreviation of `--nproc-per-node`).
    """
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=args.nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=0.1)
    saved = os.environ.get("OMP_NUM_THREADS")
    if saved is None:  # share the cores rather than oversubscribe them
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.nproc))
    print(f"launching {args.nproc} processes (torch.distributed, "
          f"{'nccl' if torch_cuda() else 'gloo'})", file=sys.stderr, flush=True)
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "danlu", "pretrain", *to_argv(args))
    except ChildFailedError as e:
        raise DanluError(f"a training process failed: {e.get_first_failure()[1].message or 'see above'}") from None
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
    return Path(args.out)


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
