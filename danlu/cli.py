"""danlu's command line: command name -> (arguments dataclass, library function), nothing else."""

from __future__ import annotations

import argparse
import importlib
import sys

from danlu.config import add_dataclass_arguments, from_namespace
from danlu.errors import DanluError

# name: (module of the arguments class, class, module of the function, function)
COMMANDS = {
    "assets": ("danlu.commands", "AssetsArgs", "danlu.commands", "assets_command"),
    "finetune": ("danlu.finetune.args", "FinetuneArgs", "danlu.finetune.run", "finetune"),
    "merge": ("danlu.finetune.args", "MergeArgs", "danlu.finetune.run", "merge_lora"),
    "predict": ("danlu.commands", "PredictArgs", "danlu.commands", "predict"),
    "evaluate": ("danlu.commands", "EvaluateArgs", "danlu.commands", "evaluate"),
    "prepare": ("danlu.data.prepare", "PrepareArgs", "danlu.data.prepare", "prepare"),
    "pretrain": ("danlu.pretrain.args", "PretrainArgs", "danlu.pretrain.run", "pretrain"),
    "run": ("danlu.recipe", "RunArgs", "danlu.recipe", "run"),
    "compress": ("danlu.compress.args", "CompressArgs", "danlu.compress.search", "compress"),
    "export": ("danlu.compress.args", "ExportArgs", "danlu.export.onnx", "export_command"),
    "serve": ("danlu.serve.args", "ServeArgs", "danlu.serve.app", "serve"),
    "runs": ("danlu.report.runs", "RunsArgs", "danlu.report.runs", "list_runs"),
    "explain": ("danlu.explain.args", "ExplainArgs", "danlu.explain.run", "explain"),
    "attack": ("danlu.robust.args", "AttackArgs", "danlu.robust.run", "attack"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="danlu", description="danlu (丹炉): prepare, fine-tune, evaluate and ship transformer models.",
        epilog="Start with `danlu run` (the quickstart on packaged assets). `danlu COMMAND --help` explains each.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (args_module, args_class, _, _) in COMMANDS.items():
        cls = getattr(importlib.import_module(args_module), args_class)
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        command = sub.add_parser(name, help=doc, description=doc)
        add_dataclass_arguments(command, cls)
        command.set_defaults(_args_class=cls)
    return parser


def quiet_import_noise() -> None:
    """Silence warnings that libraries print on import and that say nothing about the user's work:
    torchao's wheel carries CUDA/other-Python kernels it cannot load on a CPU build of torch, and then
    registers enums the way torch 2.13 deprecates."""
    import logging

    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    from danlu.hardware import configure_openmp

    configure_openmp()  # before anything imports torch
    quiet_import_noise()
    parser = build_parser()
    ns = parser.parse_args(argv)
    if not ns.command:
        parser.print_help()
        return 0
    _, _, fn_module, fn_name = COMMANDS[ns.command]
    try:
        args = from_namespace(ns._args_class, ns)
        if ns.command == "merge":
            result = getattr(importlib.import_module(fn_module), fn_name)(args.artifact, args.out, args.overwrite)
        else:
            result = getattr(importlib.import_module(fn_module), fn_name)(args)
        if ns.command == "finetune":
            print(f"artifact: {result}")
    except DanluError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0
