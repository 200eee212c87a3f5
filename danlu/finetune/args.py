"""Arguments of `danlu finetune` and `danlu merge` (light: no torch import, so --help is instant)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from danlu.config import TrainArgs, arg, check
from danlu.tasks import TASKS


@dataclass
class FinetuneArgs:
    """Fine-tune a pretrained model for a downstream task, fully or with LoRA."""

    model: str = arg(help="packaged model name (see `danlu assets list`) or a local model folder / danlu artifact")
    data: str = arg(help="packaged data set name, or a CSV/TSV/JSONL/Parquet file, or a folder with "
                         "train/validation/test files")
    out: str = arg(help="folder for the artifact (written atomically; checkpoints go to OUT.run/)")
    task: str = arg("classify", "the downstream task: " + ", ".join(TASKS))
    text_column: str = arg("text", "classify: column holding the input text")
    label_column: str = arg("label", "classify: column holding the label")
    max_length: int = arg(0, "tokens per model input; longer inputs are truncated (classify) or split into "
                             "overlapping windows (ner, qa); 0 = the task's default (qa 384, others 128)")
    val_ratio: float = arg(0.1, "share of a single data file held out for validation")
    test_ratio: float = arg(0.1, "share of a single data file held out for the final test")
    doc_stride: int = arg(0, "qa: tokens two neighbouring windows of a long context share; 0 = min(128, max "
                             "length / 2)")
    max_answer_length: int = arg(30, "qa: longest answer, in tokens")
    max_train_examples: int = arg(0, "train on a seeded sample of this many training examples (0 = all)")
    lora: bool = arg(False, "train LoRA adapters (peft) instead of all weights")
    lora_r: int = arg(8, "LoRA rank")
    lora_alpha: int = arg(16, "LoRA scaling alpha")
    lora_dropout: float = arg(0.05, "dropout on the LoRA path")
    resume: bool = arg(False, "continue a killed run from its last checkpoint in OUT.run/")
    overwrite: bool = arg(False, "replace OUT if it holds a danlu artifact (never a folder danlu did not make)")
    loss_on: str = arg("assistant", "sft: which tokens carry the loss: assistant (the answers) or all")
    packing: bool = arg(False, "sft: pack short examples into --max-length items (no attention across them)")
    chat_template: str = arg("", "sft: a Jinja chat template file, for a tokenizer without one (or to replace it)")
    augment: Literal["none", "eda", "typo", "adversarial"] = arg(
        "none", "train on examples changed on the fly: EDA, keyboard typos, or A2T-style adversarial word swaps "
                "(see danlu/tasks/augment.py)")
    train: TrainArgs = arg(default_factory=TrainArgs)

    def __post_init__(self) -> None:
        check(self.task in TASKS, "--task", f"must be one of {', '.join(TASKS)}, got {self.task!r}")
        check(self.max_train_examples >= 0, "--max-train-examples", f"must be >= 0, got {self.max_train_examples}")
        check(self.max_length == 0 or self.max_length >= 8, "--max-length", f"must be 0 or >= 8, got {self.max_length}")
        check(self.doc_stride >= 0, "--doc-stride", f"must be >= 0, got {self.doc_stride}")
        check(self.max_answer_length >= 1, "--max-answer-length", f"must be >= 1, got {self.max_answer_length}")
        check(0 < self.val_ratio < 0.5, "--val-ratio", f"must be in (0, 0.5), got {self.val_ratio}")
        check(0 < self.test_ratio < 0.5, "--test-ratio", f"must be in (0, 0.5), got {self.test_ratio}")
        check(self.lora_r >= 1, "--lora-r", f"must be >= 1, got {self.lora_r}")
        check(self.loss_on in ("assistant", "all"), "--loss-on", f"must be assistant or all, got {self.loss_on!r}")


@dataclass
class MergeArgs:
    """Merge a LoRA artifact's adapters into its base weights, giving a plain model artifact."""

    artifact: str = arg(help="a LoRA artifact made by `danlu finetune --lora`", positional=True)
    out: str = arg(help="folder for the merged artifact")
    overwrite: bool = arg(False, "replace OUT if it holds a danlu artifact (never a folder danlu did not make)")
