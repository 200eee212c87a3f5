"""What every compression method receives and returns (the contract between `danlu compress`'s search
and the methods that make variants).

A method is a plain function `method(job: CompressJob) -> Path`: it writes one variant artifact into
`job.out` (atomically, through `danlu.artifact.atomic_dir`) and returns that folder. The variant is a
normal danlu artifact (`danlu.json` with `stage: "compress"`, `method`, `parent`), which
`danlu evaluate`, `danlu predict` and `danlu serve` load directly. A method that does not apply to
the parent's architecture raises `NotApplicable(reason)`; the search records the reason and goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from danlu.tasks.base import TaskData


class NotApplicable(Exception):
    """The method does not apply to this model (the reason goes into the report)."""


@dataclass
class CompressJob:
    parent: Path  # the artifact being compressed (a folder `from_pretrained` opens)
    out: Path  # where this variant's artifact goes
    data: TaskData  # train/validation/test splits, the same ones the parent was fine-tuned on
    labels: list[str]  # the parent's label names, in id order
    max_length: int  # the parent's max input length
    task: str = "classify"  # the parent's task (danlu/tasks): its objective trains and its score measures
    calibration_samples: int = 256  # texts for calibration (static quantization, importance scores)
    seed: int = 42
    threads: int = 0  # torch / onnxruntime intra-op threads; 0 = library default
    options: dict[str, Any] = field(default_factory=dict)  # per-method knobs (e.g. distill layers)
    task_options: dict[str, Any] = field(default_factory=dict)  # the task's own options (e.g. QA's doc_stride)

    def require_task(self, *tasks: str, method: str) -> None:
        """NotApplicable unless the parent's task is one of `tasks` (methods written for those only)."""
        if self.task not in tasks:
            raise NotApplicable(f"{method} is implemented for {', '.join(tasks)} models; this is a {self.task!r} model")


Method = Callable[[CompressJob], Path]
