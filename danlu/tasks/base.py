"""What a task module provides (`Task`), and the plain values the stages hand it.

A task module is a Python module with these attributes and functions (structural typing: a module
satisfies the Protocol; no base class). Examples are task-specific values (a `str` + label for
classification, tokens + tags for NER, question/context/answers for QA); the stages never look
inside them, they pass them back to the task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

SPLITS = ("train", "validation", "test")


@dataclass
class DataSpec:
    """How to read a task's data: the data flags of finetune/evaluate/compress/export, or what an
    artifact's danlu.json recorded at fine-tuning (so evaluate reproduces the same split)."""

    data: str
    seed: int = 42
    val_ratio: float = 0.1
    test_ratio: float = 0.1
    text_column: str = "text"
    label_column: str = "label"
    max_train_examples: int = 0  # 0 = all; else a seeded sample of the train split

    @classmethod
    def from_args(cls, data: str, args: dict[str, Any]) -> "DataSpec":
        """The spec an artifact was trained with (its recorded args), reading `data`."""
        keys = ("seed", "val_ratio", "test_ratio", "text_column", "label_column")
        return cls(data, **{k: args[k] for k in keys if args.get(k) is not None})


@dataclass
class TaskData:
    """train/validation/test examples, the label names in id order, and where they came from."""

    splits: dict[str, Sequence[Any]]
    labels: list[str]
    source: str
    fingerprint: str
    split_info: dict = field(default_factory=dict)


class Objective(Protocol):
    """The training loop's view of a task (see danlu/train/loop.py)."""

    def collate(self, indices: list[int]) -> dict: ...
    def count(self, batch: dict) -> int: ...
    def loss_sum(self, model, batch: dict): ...


class Task(Protocol):
    """The surface of a task module."""

    NAME: str  # "classify", "ner", ...
    PRIMARY_METRIC: str  # key of score()'s result that early stopping, best checkpoint and the compress
    # budget use; larger is better; in [0, 1] (budgets are in points: 100 x the difference)
    HEAD: str  # the transformers auto class of the fine-tuned model, e.g. "AutoModelForTokenClassification"
    PEFT_TASK_TYPE: str  # peft TaskType name, e.g. "TOKEN_CLS"
    ROUTE: str | None  # the server route the task adds, e.g. "/v1/ner" (None: served by the decoder engine)
    ONNX_OUTPUTS: tuple[str, ...]  # output names of the exported graph, e.g. ("logits",)

    def load_data(self, spec: DataSpec) -> TaskData:
        """Read spec.data (a packaged name, a file or a folder) into splits; DanluError on bad input."""

    def build_model(self, model_path: Path, labels: list[str]):
        """A model with a fresh task head for `labels`, from a pretrained folder (for training)."""

    def make_objective(self, tokenizer, examples: Sequence[Any], labels: list[str], max_length: int
                       ) -> tuple[Objective, list[int]]:
        """The training objective over `examples`, and the token length of each training item."""

    def score(self, model, tokenizer, examples: Sequence[Any], labels: list[str], max_length: int,
              progress: str = "") -> dict[str, Any]:
        """All metrics on `examples` (PRIMARY_METRIC and "examples" among them; "loss" where defined)."""

    def predict(self, model, tokenizer, inputs: Sequence[Any], labels: list[str], max_length: int,
                batch_size: int = 32) -> list[dict[str, Any]]:
        """One JSON-able result per input (a label with probabilities, entities, an answer ...)."""

    def read_inputs(self, texts: list[str], input_file: str) -> list[Any]:
        """The inputs `danlu predict` was given on its command line / in --input FILE."""

    def format_prediction(self, input: Any, result: dict[str, Any]) -> str:
        """How `danlu predict` prints one result (without --json)."""

    def format_metrics(self, metrics: dict[str, Any]) -> str:
        """How `danlu evaluate` prints the metrics (without --json)."""

    def validate_request(self, inputs: Any) -> list[Any]:
        """The server route's `input` field -> list of inputs; raise ValueError(message) for a 400."""

    def input_of(self, example: Any) -> Any:
        """The predict input an example corresponds to (compress and export time and compare on these)."""

    def decision(self, result: dict[str, Any]) -> Any:
        """The part of a prediction two models must share to agree (a label, entity spans, an answer span)."""

    # Optional:
    # OPTIONS: tuple[str, ...] -- names of FinetuneArgs fields the task reads (e.g. QA's "doc_stride"); the
    #     stages pass them, as recorded in danlu.json, as keyword arguments to make_objective, score, predict.
    # TRAIN_METRICS: tuple[str, ...] -- which of score()'s metrics the training curve records.
    # KIND: str -- what /v1/models and server errors call a model of this task (default: NAME).
