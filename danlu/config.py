"""Typed configs and the one place where flags come from.

Each stage takes a dataclass of arguments. The CLI flags, their defaults and help text, and the
keys a YAML recipe may use are all derived from these dataclasses (see `add_dataclass_arguments`),
so there is one source of truth. A field whose type is itself a dataclass (e.g. `TrainArgs` inside
`FinetuneArgs`) becomes a group of flat flags (`--lr`, not `--train.lr`).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from danlu.errors import DanluError


def arg(default: Any = dataclasses.MISSING, help: str = "", *, positional: bool = False,
        flag: str | None = None, short: str | None = None, nargs: str | None = None,
        default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with CLI metadata: help text, positional, a custom flag name."""
    meta = {"help": help, "positional": positional, "flag": flag, "short": short, "nargs": nargs}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def check(condition: bool, flag: str, message: str) -> None:
    """Raise a DanluError naming the flag unless `condition` holds."""
    if not condition:
        raise DanluError(f"{flag} {message}")


# ---- training arguments shared by finetune and pretrain -------------------------------------------


@dataclass
class TrainArgs:
    """The optimisation loop: steps, learning rate schedule, precision, evaluation, checkpoints."""

    epochs: float = arg(3.0, "passes over the training data (ignored when --max-steps is set)")
    max_steps: int = arg(0, "optimizer steps to run; 0 means use --epochs")
    lr: float = arg(5e-5, "peak learning rate of AdamW")
    batch_size: int = arg(32, "examples per optimizer step, before accumulation (split over processes)")
    grad_accum: int = arg(1, "micro-batches accumulated per optimizer step; the loss equals the full-batch loss")
    warmup_ratio: float = arg(0.06, "fraction of the steps spent warming the learning rate up linearly from 0")
    weight_decay: float = arg(0.01, "AdamW weight decay (not applied to biases and LayerNorm weights)")
    max_grad_norm: float = arg(1.0, "clip the gradient norm to this; 0 turns clipping off")
    bf16: bool = arg(False, "train with bfloat16 autocast (fast on CPUs with AMX and on recent GPUs)")
    seed: int = arg(42, "seed for data order, splits, initialisation and dropout")
    eval_every: int = arg(0, "evaluate every N optimizer steps; 0 means once per epoch")
    early_stopping_patience: int = arg(0, "stop after N evaluations without improvement; 0 turns it off")
    save_every: int = arg(0, "write a resumable checkpoint every N steps; 0 means at each evaluation")
    keep_checkpoints: int = arg(2, "how many of the latest checkpoints to keep")
    log_every: int = arg(10, "log the training loss every N steps")
    threads: int = arg(0, "CPU threads for torch; 0 = one per CPU that other processes leave free (affinity "
                          "mask, cgroup quota and current load decide)")

    def __post_init__(self) -> None:
        check(self.epochs > 0 or self.max_steps > 0, "--epochs", f"must be > 0, got {self.epochs}")
        check(self.max_steps >= 0, "--max-steps", f"must be >= 0, got {self.max_steps}")
        check(self.lr > 0, "--lr", f"must be > 0, got {self.lr}")
        check(self.batch_size >= 1, "--batch-size", f"must be >= 1, got {self.batch_size}")
        check(self.grad_accum >= 1, "--grad-accum", f"must be >= 1, got {self.grad_accum}")
        check(self.batch_size % self.grad_accum == 0, "--batch-size",
              f"({self.batch_size}) must be a multiple of --grad-accum ({self.grad_accum})")
        check(0 <= self.warmup_ratio < 1, "--warmup-ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        check(self.weight_decay >= 0, "--weight-decay", f"must be >= 0, got {self.weight_decay}")
        check(self.max_grad_norm >= 0, "--max-grad-norm", f"must be >= 0, got {self.max_grad_norm}")
        for name in ("eval_every", "early_stopping_patience", "save_every"):
            check(getattr(self, name) >= 0, "--" + name.replace("_", "-"), "must be >= 0")
        check(self.keep_checkpoints >= 1, "--keep-checkpoints", "must be >= 1")
        check(self.log_every >= 1, "--log-every", "must be >= 1")
        check(self.threads >= 0, "--threads", f"must be >= 0, got {self.threads}")


# ---- dataclass <-> argparse / dict ---------------------------------------------------------------


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, group=None) -> None:
    """Add one flag (or positional) per field of `cls`; nested dataclasses become argument groups."""
    target = group or parser
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp, _ = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            title = (tp.__doc__ or tp.__name__).strip().splitlines()[0]
            add_dataclass_arguments(parser, tp, parser.add_argument_group(f.name, title))
            continue
        help_text = f.metadata.get("help", "")
        kwargs: dict[str, Any] = {"help": help_text}
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        origin = typing.get_origin(tp)
        if origin is Literal:
            kwargs["choices"] = list(typing.get_args(tp))
            kwargs["type"] = type(kwargs["choices"][0])
        elif origin is list:
            (item,) = typing.get_args(tp)
            kwargs["type"] = item
            kwargs["nargs"] = f.metadata.get("nargs") or ("+" if required else "*")
        elif tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = tp
        if f.metadata.get("positional"):
            if not required:
                kwargs.setdefault("nargs", "?")
            kwargs["default"] = default
            kwargs["metavar"] = f.name.upper()
            if not required and default not in (None, []):
                kwargs["help"] += f" (default: {default})"
            target.add_argument(f.name, **kwargs)
            continue
        names = [flag_name(f)] + ([f.metadata["short"]] if f.metadata.get("short") else [])
        kwargs["dest"] = f.name
        if required:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
            kwargs["help"] += " (default: %(default)s)"
        target.add_argument(*names, **kwargs)


def from_namespace(cls: type, ns: argparse.Namespace) -> Any:
    """Build `cls` from parsed arguments, nested dataclasses included."""
    hints = _hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        tp, _ = _unwrap_optional(hints[f.name])
        values[f.name] = from_namespace(tp, ns) if dataclasses.is_dataclass(tp) else getattr(ns, f.name)
    return cls(**values)


def field_names(cls: type) -> list[str]:
    """Every key a recipe may use for `cls`, nested dataclasses flattened."""
    hints = _hints(cls)
    names = []
    for f in dataclasses.fields(cls):
        tp, _ = _unwrap_optional(hints[f.name])
        names += field_names(tp) if dataclasses.is_dataclass(tp) else [f.name]
    return names


def from_dict(cls: type, values: dict[str, Any], where: str = "") -> Any:
    """Build `cls` from a flat dict (a recipe stage), naming unknown keys and missing ones."""
    known = field_names(cls)
    normalised = {k.replace("-", "_"): v for k, v in values.items()}
    unknown = [k for k in normalised if k not in known]
    if unknown:
        raise DanluError(f"{where}unknown key {unknown[0]!r}; known: {', '.join(known)}")

    def build(c: type) -> Any:
        hints = _hints(c)
        kwargs = {}
        for f in dataclasses.fields(c):
            tp, _ = _unwrap_optional(hints[f.name])
            if dataclasses.is_dataclass(tp):
                kwargs[f.name] = build(tp)
            elif f.name in normalised:
                kwargs[f.name] = normalised[f.name]
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise DanluError(f"{where}missing required key {f.name!r}")
        return c(**kwargs)

    return build(cls)


def to_dict(obj: Any) -> dict[str, Any]:
    """A flat dict of a config (for danlu.json and recipes)."""
    flat: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            flat.update(to_dict(value))
        else:
            flat[f.name] = value
    return flat
