"""The training loop every objective shares, on `accelerate` (one process or many).

Written by hand rather than with the HF Trainer because we need three things it gets wrong or slow:
the loss under gradient accumulation equals the full-batch loss (token/example counts are summed
over micro-batches and processes before dividing), batches are bucketed by length (far less padding),
and resume is exact (deterministic batch plan + saved RNG state).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from tqdm.auto import tqdm

from danlu.artifact import claim_dir
from danlu.config import TrainArgs
from danlu.train import checkpoint as ckpt
from danlu.train.batching import epoch_batches, shard
from danlu.train.tracking import Trackers, start_tracking

# Arguments that say where the curve is also sent, not what is trained: a resumed run may change them.
NOT_IN_RESUME_KEY = ("report_to", "mlflow_uri")


class Objective(Protocol):
    """What a task contributes to the loop: how to batch examples and what the loss is."""

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """The micro-batch of the given example indices, as tensors."""

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        """How many loss terms the batch holds (examples, or predicted tokens)."""

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The *sum* of the loss terms of the batch (the loop divides by the global count)."""

    # Optional: `set_epoch(epoch)`, called before the first batch of each epoch (e.g. for new MLM masks).


@dataclass
class EvalResult:
    metrics: dict[str, float]  # what the training curve records
    score: float  # the number early stopping and best-checkpoint selection maximise
    details: dict[str, Any] = field(default_factory=dict)  # every metric of the evaluation (kept for the best)


@dataclass
class TrainResult:
    steps: int
    best_step: int | None
    best_metrics: dict[str, float]
    train_seconds: float
    train_examples: int
    history: list[dict[str, Any]] = field(default_factory=list)
    precision: str = "fp32"  # what the run really used ("bf16" autocast or "fp32")
    best_details: dict[str, Any] = field(default_factory=dict)  # EvalResult.details of the best evaluation

    @property
    def examples_per_second(self) -> float:
        return self.train_examples / self.train_seconds if self.train_seconds else 0.0


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW without decay on biases and normalisation weights (the BERT recipe)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel (CPU and CUDA) is ~3x faster than the foreach one on MiniLM here; per-parameter
    # AdamW is a quarter of a bf16 step on this CPU (shared/MACHINE-NOTES.md).
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in decay + no_decay)
    return torch.optim.AdamW(groups, lr=lr, fused=fused, foreach=None if fused else True)


def make_schedule(optimizer, warmup_steps: int, total_steps: int, schedule: str = "linear"):
    """Linear warmup from 0, then linear or cosine decay to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def total_steps(args: TrainArgs, num_examples: int) -> int:
    if args.max_steps:
        return args.max_steps
    return max(1, math.ceil(args.epochs * math.ceil(num_examples / args.batch_size)))


def train(model: torch.nn.Module, objective: Objective, lengths: list[int], args: TrainArgs,
          run_dir: Path, evaluate: Callable[[torch.nn.Module], EvalResult] | None = None,
          accelerator=None, resume: bool = False, resume_key: dict[str, Any] | None = None,
          warmup_steps: int | None = None, schedule: str = "linear",
          on_best: Callable[[torch.nn.Module, Path], None] | None = None) -> TrainResult:
    """Train `model` on examples of the given token `lengths`; return the history and best step.

    Checkpoints go to `run_dir/checkpoints`, the curve to `run_dir/metrics.jsonl`, and the best
    model (by `evaluate(...).score`) to `run_dir/best` through `on_best(model, folder)`.
    """
    from accelerate import Accelerator

    if accelerator is None:
        from danlu.hardware import set_threads, use_bf16

        if not torch.cuda.is_available():
            set_threads(args.threads)

        _forget_single_process_state()
        # cpu=True where there is no GPU: under torchrun/accelerate launch on CPU, accelerate otherwise
        # falls back to one process per launch instead of a gloo process group.
        accelerator = Accelerator(mixed_precision="bf16" if use_bf16(args.bf16) else "no",
                                  cpu=not torch.cuda.is_available())
    rank, world = accelerator.process_index, accelerator.num_processes
    if rank == 0:
        claim_dir(run_dir, flag="the run folder")  # refuses a folder of the user's: danlu empties this one
    run_dir.mkdir(parents=True, exist_ok=True)
    steps = total_steps(args, len(lengths))
    warmup = warmup_steps if warmup_steps is not None else int(args.warmup_ratio * steps)
    optimizer = make_optimizer(model, args.lr, args.weight_decay)
    scheduler = make_schedule(optimizer, warmup, steps, schedule)
    key = {k: v for k, v in {**(resume_key or {}), "world_size": world}.items() if k not in NOT_IN_RESUME_KEY}

    state: dict[str, Any] = {"step": 0, "best_score": None, "best_step": None, "best_metrics": {},
                             "bad_evals": 0, "resume_key": key}
    metrics_path = run_dir / "metrics.jsonl"
    resumed = False
    if resume and (last := ckpt.latest_checkpoint(run_dir)) is not None:
        saved = json.loads((last / ckpt.STATE).read_text())
        ckpt.check_same_run(saved["resume_key"], key, run_dir)
        state = ckpt.load_checkpoint(last, model, optimizer, scheduler, rank)
        resumed = True
        if rank == 0:
            accelerator.print(f"resuming from {last} (step {state['step']})")
    elif rank == 0:
        metrics_path.unlink(missing_ok=True)
        import shutil

        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    history = _read_history(metrics_path, state["step"]) if rank == 0 else []
    tracker = Trackers([])
    if rank == 0:
        _write_history(metrics_path, history)
        tracker = start_tracking(args.report_to, run_dir, args.mlflow_uri, {**key, **vars(args)},
                                 state["step"] if resumed else None)

    def record(entry: dict[str, Any], **tracked: float) -> None:
        """One entry of the curve: into the history, metrics.jsonl and the trackers."""
        history.append(entry)
        if rank == 0:
            _append(metrics_path, entry)
            tracker.log(entry["step"], {**entry, **tracked})

    try:
        result = _loop(model, objective, lengths, args, run_dir, evaluate, accelerator, state, steps, optimizer,
                       scheduler, record, on_best)
    except BaseException as e:
        tracker.close("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    tracker.close("FINISHED")
    result.history = history
    return result


def _loop(model, objective, lengths, args, run_dir, evaluate, accelerator, state, steps, optimizer, scheduler,
          record, on_best) -> TrainResult:
    """The optimizer steps from `state["step"]` to `steps` (or early stopping)."""
    rank, world = accelerator.process_index, accelerator.num_processes
    model, optimizer = accelerator.prepare(model, optimizer)
    batches_per_epoch = math.ceil(len(lengths) / args.batch_size)
    eval_every = args.eval_every or batches_per_epoch
    save_every = args.save_every or eval_every
    plan_epoch, plan = -1, []
    seen, train_seconds = 0, 0.0
    progress = tqdm(total=steps, initial=state["step"], desc="training", unit="step",
                    disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    model.train()
    step = state["step"]
    while step < steps:
        epoch, index = divmod(step, batches_per_epoch)
        if epoch != plan_epoch:
            plan, plan_epoch = epoch_batches(lengths, args.batch_size, args.seed, epoch), epoch
            if hasattr(objective, "set_epoch"):
                objective.set_epoch(epoch)
        started = time.perf_counter()
        micro = [objective.collate(ids) for ids in shard(plan[index], rank, world, args.grad_accum) if ids]
        micro = [{k: v.to(accelerator.device) for k, v in b.items()} for b in micro]
        local_count = sum(objective.count(b) for b in micro)
        global_count = int(accelerator.reduce(torch.tensor(local_count, device=accelerator.device), "sum"))
        loss_total = torch.zeros((), device=accelerator.device)
        for i, batch in enumerate(micro):
            sync = accelerator.no_sync(model) if i < len(micro) - 1 else _nothing()
            with sync, accelerator.autocast():
                loss_sum = objective.loss_sum(model, batch)
            # DDP averages gradients over processes: scale by world so the result is sum / global count.
            accelerator.backward(loss_sum * world / max(global_count, 1))
            loss_total += loss_sum.detach().float()
        grad_norm = None
        if args.max_grad_norm:
            grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss = float(accelerator.reduce(loss_total, "sum")) / max(global_count, 1)
        train_seconds += time.perf_counter() - started
        seen += len(plan[index])
        progress.update(1)
        progress.set_postfix(loss=f"{loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if step % args.log_every == 0 or step == 1 or step == steps:
            record({"step": step, "epoch": round(step / batches_per_epoch, 4), "loss": loss,
                    "lr": scheduler.get_last_lr()[0], **({"grad_norm": grad_norm} if grad_norm is not None else {})},
                   examples_per_second=seen / train_seconds if train_seconds else 0.0)
        stop = False
        if evaluate is not None and (step % eval_every == 0 or step == steps):
            stop = _evaluate(model, evaluate, accelerator, state, step, args, record, run_dir, on_best)
        state["step"] = step
        if step % save_every == 0 or stop or step == steps:
            folder = ckpt.save_checkpoint(run_dir, step, accelerator.unwrap_model(model), optimizer,
                                          scheduler, state, rank, args.keep_checkpoints)
            accelerator.wait_for_everyone()
            if rank:
                ckpt.save_rank_rng(folder, rank)
            accelerator.wait_for_everyone()
        if stop:
            accelerator.print(f"early stopping at step {step}: no improvement in "
                              f"{args.early_stopping_patience} evaluations")
            break
    progress.close()
    precision = "bf16" if accelerator.mixed_precision == "bf16" else "fp32"
    return TrainResult(step, state["best_step"], state["best_metrics"], train_seconds, seen, [], precision,
                       state.get("best_details", {}))  # absent from a checkpoint of an older danlu


def _evaluate(model, evaluate, accelerator, state, step, args, record, run_dir, on_best) -> bool:
    """Evaluate, keep the best model, and say whether early stopping should end the run."""
    model.eval()
    with torch.inference_mode(), accelerator.autocast():
        result = evaluate(accelerator.unwrap_model(model))
    model.train()
    record({"step": step, **{f"eval_{k}": v for k, v in result.metrics.items()}})
    if state["best_score"] is None or result.score > state["best_score"]:
        state.update(best_score=result.score, best_step=step, best_metrics=result.metrics,
                     best_details=result.details, bad_evals=0)
        if on_best is not None and accelerator.is_main_process:
            on_best(accelerator.unwrap_model(model), run_dir / "best")
    else:
        state["bad_evals"] += 1
    return bool(args.early_stopping_patience) and state["bad_evals"] >= args.early_stopping_patience


def _forget_single_process_state() -> None:
    """accelerate keeps one process-wide state; a second in-process run with another precision
    (e.g. a bf16 run, then an fp32 one in the same Python) would be refused. Outside a distributed
    launch there is nothing to keep, so start afresh."""
    from accelerate.state import AcceleratorState, PartialState

    if PartialState._shared_state and PartialState().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=True)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _append(path: Path, entry: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def _read_history(path: Path, up_to_step: int) -> list[dict]:
    if not path.exists():
        return []
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in entries if e["step"] <= up_to_step]


def _write_history(path: Path, history: list[dict]) -> None:
    from danlu.artifact import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(e) + "\n" for e in history))
