"""Arguments of `danlu pretrain` (light: no torch import, so --help is instant)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from danlu.config import TrainArgs, arg, check

OBJECTIVES = ("mlm", "mlm+nsp", "clm")
ARCHES = {"mlm": ("bert",), "mlm+nsp": ("bert",), "clm": ("llama", "gpt2")}


@dataclass
class PretrainTrainArgs(TrainArgs):
    """The optimisation loop: steps, learning rate schedule, precision, evaluation, checkpoints."""

    # Pretraining defaults: a fixed number of steps, a higher learning rate, regular evaluations.
    max_steps: int = arg(2000, "optimizer steps to run; 0 means use --epochs")
    lr: float = arg(5e-4, "peak learning rate of AdamW")
    warmup_ratio: float = arg(0.05, "fraction of the steps spent warming the learning rate up linearly "
                                    "from 0 (see --warmup-steps)")
    eval_every: int = arg(200, "evaluate every N optimizer steps; 0 means once per epoch")
    early_stopping_patience: int = arg(0, "stop after N evaluations without improvement of the validation "
                                          "loss; 0 turns it off")


@dataclass
class PretrainArgs:
    """Pretrain a BERT (masked LM, next-sentence prediction) or a Llama/GPT-2 (causal LM) on prepared data."""

    data: str = arg(help="a folder made by `danlu prepare`")
    out: str = arg(help="folder for the artifact (written atomically; checkpoints go to OUT.run/)")
    objective: Literal["mlm", "mlm+nsp", "clm"] = arg("mlm", "masked LM (15%%, 80/10/10), masked LM + next "
                                                             "sentence prediction, or causal LM")
    arch: Literal["auto", "bert", "llama", "gpt2"] = arg("auto", "model architecture; auto: bert for mlm "
                                                                 "objectives, llama for clm, or --init's")
    size: Literal["tiny", "small", "base"] = arg("tiny", "model size: tiny (2 layers, width 128), small "
                                                         "(4 x 512), base (12 x 768)")
    config: str = arg("", "a JSON file of model config fields that override --size (e.g. "
                          '{"num_hidden_layers": 4})')
    init: str = arg("", "continue pretraining this model (packaged name or folder) instead of random weights")
    seq_len: int = arg(128, "tokens per training sequence")
    warmup_steps: int | None = arg(None, "steps of linear learning-rate warmup; unset: --warmup-ratio "
                                         "of the steps")
    schedule: Literal["cosine", "linear"] = arg("cosine", "learning-rate decay after warmup")
    mask_prob: float = arg(0.15, "share of tokens masked for MLM (of those: 80%% [MASK], 10%% random, 10%% kept)")
    eval_sequences: int = arg(256, "validation sequences scored at each evaluation")
    nproc: int = arg(1, "training processes on this machine (torch.distributed: gloo on CPU, nccl on GPU); "
                        "each gets 1/nproc of every batch")
    resume: bool = arg(False, "continue a killed run from its last checkpoint in OUT.run/")
    overwrite: bool = arg(False, "replace OUT if it holds a danlu artifact (never a folder danlu did not make)")
    train: PretrainTrainArgs = arg(default_factory=lambda: PretrainTrainArgs())

    def __post_init__(self) -> None:
        check(self.seq_len >= 16, "--seq-len", f"must be >= 16, got {self.seq_len}")
        check(self.warmup_steps is None or self.warmup_steps >= 0, "--warmup-steps",
              f"must be >= 0, got {self.warmup_steps}")
        check(0 < self.mask_prob < 1, "--mask-prob", f"must be in (0, 1), got {self.mask_prob}")
        check(self.eval_sequences >= 1, "--eval-sequences", f"must be >= 1, got {self.eval_sequences}")
        check(self.nproc >= 1, "--nproc", f"must be >= 1, got {self.nproc}")
        if self.arch != "auto":
            check(self.arch in ARCHES[self.objective], "--objective",
                  f"{self.objective} cannot train --arch {self.arch}: it needs --arch "
                  f"{' or '.join(ARCHES[self.objective])}"
                  + (" (next-sentence prediction and masked LM need a bidirectional encoder)"
                     if self.arch != "bert" else " (causal LM needs a decoder)"))
        check(self.train.batch_size % self.nproc == 0, "--batch-size",
              f"({self.train.batch_size}) must be a multiple of --nproc ({self.nproc})")

    def resolved_arch(self, init_model_type: str | None = None) -> str:
        """The architecture to build: --arch, else --init's, else the objective's usual one."""
        if self.arch != "auto":
            return self.arch
        if init_model_type:
            return init_model_type
        return "bert" if self.objective.startswith("mlm") else "llama"
