"""Resumable checkpoints: weights (safetensors), optimizer and schedule, RNG state, loop state.

With frozen weights (LoRA) only the trainable tensors are written. Each checkpoint is written atomically
into `checkpoints/step-NNNNNNN/`; only the newest `keep` are kept. Optimizer and RNG states are tensors and plain numbers, loaded with `weights_only=True`.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from danlu.artifact import OWNED, atomic_dir
from danlu.errors import DanluError

STATE = "train_state.json"


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": np.random.get_state()[1].tolist()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), 624, 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, optimizer, scheduler,
                    loop_state: dict[str, Any], rank: int, keep: int) -> Path:
    """Write checkpoint `step` (rank 0 writes weights and state; every rank its RNG)."""
    folder = run_dir / "checkpoints" / f"step-{step:07d}"
    if rank == 0:
        with atomic_dir(folder, overwrite=True) as tmp:
            (tmp / OWNED).touch()
            save_weights(model, tmp)
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                       tmp / "optimizer.pt")
            torch.save(rng_state(), tmp / "rng-0.pt")
            (tmp / STATE).write_text(json.dumps(loop_state, indent=2) + "\n")
        old = sorted((run_dir / "checkpoints").glob("step-*"))[:-keep]
        for path in old:
            shutil.rmtree(path, ignore_errors=True)
    return folder


def save_weights(model: torch.nn.Module, folder: Path) -> None:
    """The weights training changes, into `folder`: all of them (model.safetensors), or where some are frozen
    (LoRA) only the trainable tensors (trainable.safetensors: adapters and heads, a few MB, where the whole
    of SmolLM2 is 540 MB written at every checkpoint and improvement)."""
    folder.mkdir(parents=True, exist_ok=True)
    if all(p.requires_grad for p in model.parameters()):
        save_model(model, str(folder / "model.safetensors"))
        return
    trainable = {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}
    save_file(trainable, str(folder / "trainable.safetensors"))


def load_weights(model: torch.nn.Module, folder: Path) -> bool:
    """Put the weights `save_weights` wrote in `folder` back into `model`; False where there are none."""
    if (folder / "model.safetensors").exists():
        load_model(model, str(folder / "model.safetensors"))
        return True
    if not (folder / "trainable.safetensors").exists():
        return False
    saved = load_file(str(folder / "trainable.safetensors"))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    if set(saved) != trainable:
        odd = sorted(set(saved) ^ trainable)
        raise DanluError(f"{folder}: the saved weights do not fit the model ({', '.join(odd[:3])})")
    model.load_state_dict(saved, strict=False)
    return True


def save_rank_rng(folder: Path, rank: int) -> None:
    """Other ranks add their RNG state next to rank 0's (after rank 0 has renamed the folder)."""
    torch.save(rng_state(), folder / f"rng-{rank}.pt")


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = [p for p in sorted((run_dir / "checkpoints").glob("step-*")) if (p / STATE).exists()]
    return done[-1] if done else None


def load_checkpoint(folder: Path, model: torch.nn.Module, optimizer, scheduler, rank: int) -> dict:
    """Restore weights, optimizer, schedule and this rank's RNG; return the loop state."""
    if not load_weights(model, folder):
        raise DanluError(f"{folder} holds no weights; it is not a danlu checkpoint")
    states = torch.load(folder / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(states["optimizer"])
    scheduler.load_state_dict(states["scheduler"])
    rng_file = folder / f"rng-{rank}.pt"
    if not rng_file.exists():
        raise DanluError(f"{folder} has no RNG state for process {rank}; resume with the same --nproc")
    set_rng_state(torch.load(rng_file, weights_only=True))
    return json.loads((folder / STATE).read_text())


def check_same_run(saved: dict[str, Any], current: dict[str, Any], run_dir: Path) -> None:
    """Refuse to resume a run whose configuration differs from the checkpoint's."""
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}"
             for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    if diffs:
        raise DanluError(f"cannot resume from {run_dir}: it was made with a different configuration ("
                         + "; ".join(diffs[:5]) + "). Use a new --out, or the same arguments")
