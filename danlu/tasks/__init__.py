"""The task layer: one module per downstream task, and the registry of them (data, imported lazily).

A task module says, for its task, how to read its data, build its model, make the training objective,
predict, score, and which server route it adds. The stages (finetune, evaluate, predict, compress,
export, serve) look a task up here and call its functions; they hold no per-task branches.
`danlu/tasks/base.py` documents the surface every module provides (`Task`).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from danlu.errors import DanluError, did_you_mean

# task name -> module; adding a task is adding its module and one line here.
TASKS: dict[str, str] = {
    "classify": "danlu.tasks.classify",
    "ner": "danlu.tasks.ner",
    "qa": "danlu.tasks.qa",
    "sft": "danlu.tasks.sft",
    "causal-lm": "danlu.tasks.causal_lm",
}


def get_task(name: str) -> ModuleType:
    """The module of task `name` (it satisfies `danlu.tasks.base.Task`)."""
    if name not in TASKS:
        raise DanluError(f"unknown task {name!r}{did_you_mean(name, list(TASKS))}")
    return importlib.import_module(TASKS[name])


def task_options(task: ModuleType, recorded: dict) -> dict:
    """The task's own options (its OPTIONS, e.g. QA's doc_stride) from recorded arguments (danlu.json's
    `args`, or a fine-tune's arguments): the keyword arguments its make_objective, score and predict take."""
    return {name: recorded[name] for name in getattr(task, "OPTIONS", ()) if name in recorded}


def task_names() -> list[str]:
    return list(TASKS)
