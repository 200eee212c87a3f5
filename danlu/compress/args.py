"""Arguments of `danlu compress` and `danlu export` (light: no torch import, so --help is instant)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from danlu.config import arg, check

# The methods danlu compress knows (danlu/compress/search.py maps each to its function).
METHOD_NAMES = ["bf16", "int8-dynamic", "int8-static", "int8-weight-only", "int4-weight-only", "onnx", "onnx-int8",
                "prune-structured", "prune-magnitude", "distill", "share-layers"]


@dataclass
class CompressArgs:
    """Make and measure compressed variants of a model; keep the best within an accuracy budget."""

    artifact: str = arg(help="a fine-tuned task artifact (classify, ner, ...) or a decoder such as smollm2-135m",
                        positional=True)
    out: str = arg(help="folder for the variants, results.json and report.md/report.html")
    eval_data: str = arg("", "data to measure on (packaged name or file/folder, split as at fine-tuning); "
                             "its train split calibrates and trains, its test split scores. Required for "
                             "encoder task models; for decoders a text file (default: a held-out slice of wiki-sample)")
    methods: list[str] = arg(default_factory=lambda: ["all"], nargs="+",
                             help="methods to try: `all`, or names from " + ", ".join(METHOD_NAMES)
                                  + "; `A+B` applies B to A's variant (e.g. distill+int8-dynamic)")
    max_accuracy_drop: float = arg(1.0, "largest loss of the task's primary metric allowed (accuracy, entity F1, "
                                        "...), in points (1.0 = one percentage point); for decoders, the largest perplexity increase in percent")
    objective: Literal["latency", "throughput", "size"] = arg(
        "latency", "what the chosen variant is best at: latency at batch 1, throughput at batch 32, or size on disk")
    calibration_samples: int = arg(256, "training texts used to calibrate static quantization and score importance")
    threads: int = arg(0, "intra-op threads for torch and onnxruntime while measuring (0 = all cores)")
    repeats: int = arg(5, "timed repeats; latency and throughput are medians over them")
    latency_samples: int = arg(32, "texts timed one at a time (batch 1) in each repeat")
    throughput_batches: int = arg(4, "batches of 32 texts timed in each repeat")
    train_epochs: float = arg(2.0, "epochs of training for distill and share-layers (the recovery after "
                                   "prune-structured runs half as many)")
    train_max_steps: int = arg(0, "cap on those training steps (0 = use --train-epochs)")
    train_lr: float = arg(1e-4, "learning rate of those trainings")
    train_bf16: bool = arg(True, "train with bf16 autocast where the hardware has it")
    distill_layers: int = arg(3, "layers of the distilled student (its layers start as every "
                                    "n/k-th layer of the teacher)")
    temperature: float = arg(2.0, "distillation temperature of the soft targets")
    soft_weight: float = arg(0.5, "weight of the soft-target loss (the rest goes to the hard labels)")
    hidden_weight: float = arg(0.0, "weight of a cosine loss matching student and teacher hidden states")
    prune_heads: float = arg(0.25, "share of attention heads prune-structured removes (by importance)")
    prune_ffn: float = arg(0.25, "share of feed-forward neurons prune-structured removes (by importance)")
    sparsity: float = arg(0.5, "share of linear weights prune-magnitude zeroes")
    share_groups: int = arg(1, "distinct layers of the share-layers student (1 = ALBERT: one layer repeated)")
    seed: int = arg(42, "seed for sampling, initialisation and training")
    reuse_variants: bool = arg(False, "reuse a variant already in OUT/variants when it was made from the same "
                                      "parent with the same method and options (it is measured again): a long "
                                      "search can run in parts, e.g. the trainings first")
    overwrite: bool = arg(False, "replace the results of an earlier search in OUT (a folder danlu did not make "
                                 "is never touched)")

    def __post_init__(self) -> None:
        check(self.max_accuracy_drop >= 0, "--max-accuracy-drop", f"must be >= 0, got {self.max_accuracy_drop}")
        check(self.calibration_samples >= 1, "--calibration-samples", f"must be >= 1, got {self.calibration_samples}")
        check(self.threads >= 0, "--threads", f"must be >= 0, got {self.threads}")
        check(self.repeats >= 1, "--repeats", f"must be >= 1, got {self.repeats}")
        check(self.latency_samples >= 1, "--latency-samples", f"must be >= 1, got {self.latency_samples}")
        check(self.throughput_batches >= 1, "--throughput-batches", f"must be >= 1, got {self.throughput_batches}")
        check(self.train_epochs > 0, "--train-epochs", f"must be > 0, got {self.train_epochs}")
        check(self.train_max_steps >= 0, "--train-max-steps", f"must be >= 0, got {self.train_max_steps}")
        check(self.train_lr > 0, "--train-lr", f"must be > 0, got {self.train_lr}")
        check(self.distill_layers >= 1, "--distill-layers", f"must be >= 1, got {self.distill_layers}")
        check(self.temperature > 0, "--temperature", f"must be > 0, got {self.temperature}")
        check(0 <= self.soft_weight <= 1, "--soft-weight", f"must be in [0, 1], got {self.soft_weight}")
        check(self.hidden_weight >= 0, "--hidden-weight", f"must be >= 0, got {self.hidden_weight}")
        check(0 <= self.prune_heads < 1, "--prune-heads", f"must be in [0, 1), got {self.prune_heads}")
        check(0 <= self.prune_ffn < 1, "--prune-ffn", f"must be in [0, 1), got {self.prune_ffn}")
        check(0 < self.sparsity < 1, "--sparsity", f"must be in (0, 1), got {self.sparsity}")
        check(self.share_groups >= 1, "--share-groups", f"must be >= 1, got {self.share_groups}")
        check(bool(self.methods), "--methods", "needs at least one method")


@dataclass
class ExportArgs:
    """Export a fine-tuned task artifact to ONNX, optimise the graph for ONNX Runtime, check parity."""

    artifact: str = arg(help="a fine-tuned encoder task artifact (classify, ner, ...)", positional=True)
    out: str = arg(help="folder for the ONNX artifact (model.onnx, config, tokenizer, danlu.json)")
    format: Literal["onnx"] = arg("onnx", "export format")
    optimize: int = arg(99, "offline graph optimisation: 0 none (the session still applies ONNX Runtime's "
                            "defaults on load), 1 basic, 2 extended, 99 all; 1 and above also run the "
                            "transformer fusions (attention, LayerNorm, GELU)")
    quantize: Literal["none", "int8"] = arg("none", "int8: dynamic int8 quantization of the optimised graph")
    eval_data: str = arg("", "data whose test split checks prediction agreement with PyTorch "
                             "(default: the artifact's own fine-tuning data where it is recorded)")
    parity_samples: int = arg(256, "test examples compared with PyTorch (0 = all)")
    opset: int = arg(17, "ONNX opset version")
    overwrite: bool = arg(False, "replace OUT if it holds a danlu artifact (never a folder danlu did not make)")

    def __post_init__(self) -> None:
        check(self.optimize in (0, 1, 2, 99), "--optimize", f"must be one of 0, 1, 2, 99, got {self.optimize}")
        check(self.parity_samples >= 0, "--parity-samples", f"must be >= 0, got {self.parity_samples}")
        check(self.opset >= 14, "--opset", f"must be >= 14, got {self.opset}")
