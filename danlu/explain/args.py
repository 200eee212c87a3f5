"""Arguments of `danlu explain` (light: no torch import, so --help is instant)."""

from __future__ import annotations

from dataclasses import dataclass

from danlu.config import arg, check


@dataclass
class ExplainArgs:
    """Explain predictions: integrated-gradients token attributions, attention of every layer and head, rollout."""

    artifact: str = arg(help="a trained artifact (an ONNX or compressed variant is explained through its parent)",
                        positional=True)
    text: str = arg("", "the text to explain (or use --data for a summary over a split; qa: --question/--context)",
                    positional=True)
    out: str = arg("", "the HTML page to write (JSON beside it); default explain.html, or explain/ with --data")
    target: str = arg("", "label to attribute to (default: the predicted one; ner: at each entity's first token)")
    question: str = arg("", "qa: the question (with --context)")
    context: str = arg("", "qa: the passage that holds the answer")
    max_new_tokens: int = arg(1, "sft/causal-lm: attribute each token of a greedy continuation this long "
                                 "(1: the next token)")
    steps: int = arg(50, "integration steps of integrated gradients")
    internal_batch_size: int = arg(0, "interpolation steps per forward/backward pass; 0 chooses from free memory")
    bf16: bool = arg(False, "run the integration steps under bfloat16 autocast where the hardware has native bf16 "
                            "(faster; the printed convergence delta says what it cost)")
    data: str = arg("", "packaged data name or file/folder: explain --n examples of --split and write a summary")
    split: str = arg("test", "which split of --data: train, validation or test")
    n: int = arg(100, "how many examples of the split to explain (with --data)")
    device: str = arg("", "cpu, cuda or cuda:N (default: cuda if present)")

    def __post_init__(self) -> None:
        check(self.steps >= 2, "--steps", f"must be >= 2, got {self.steps}")
        check(self.internal_batch_size >= 0, "--internal-batch-size", f"must be >= 0, got {self.internal_batch_size}")
        check(bool(self.text or self.question or self.context) != bool(self.data), "TEXT",
              "(--question/--context for qa) or --data: give exactly one")
        check(self.max_new_tokens >= 1, "--max-new-tokens", f"must be >= 1, got {self.max_new_tokens}")
        check(self.n >= 1, "--n", f"must be >= 1, got {self.n}")
