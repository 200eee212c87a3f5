"""`danlu pretrain`: a BERT (MLM, MLM + NSP) or a Llama / GPT-2 (causal LM) from prepared token shards,
on the shared training loop (accelerate: one process, or N with `--nproc N` / any torch launcher)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from danlu.artifact import check_out, remove_own_dir
from danlu.config import to_dict
from danlu.errors import DanluError
from danlu.pretrain.args import ARCHES, PretrainArgs
from danlu.pretrain.models import read_overrides
from danlu.pretrain.data import PackedWindows, Prepared, SentenceChunks, load_prepared
from danlu.train.loop import EvalResult, train

# Arguments that do not change the numbers of a run: a resumed run may differ in these.
NOT_IN_RESUME_KEY = {"resume", "out", "log_every", "keep_checkpoints", "save_every", "eval_every",
                     "eval_sequences", "nproc", "overwrite", "threads"}


def build_objective(objective: str, data: Prepared, split: str, seq_len: int, mask_prob: float, seed: int):
    """The objective over one split of the prepared data."""
    from danlu.pretrain.objectives import CausalLM, MaskedLM, MaskedLMWithNSP, Masker

    shards = data.splits.get(split, [])
    if objective == "clm":
        return CausalLM(PackedWindows(shards, seq_len), seed)
    mask_id = data.special("mask")
    if mask_id is None:
        raise DanluError(f"--objective {objective}: the prepared data's tokenizer has no mask token; prepare "
                         "with a trained tokenizer (--tokenizer bpe, wordpiece or unigram)")
    cls_id = data.special("cls") if data.special("cls") is not None else data.special("bos")
    sep_id = data.meta["separator_id"]
    special = [v for v in data.meta["special_ids"].values() if v is not None]
    masker = Masker(data.vocab_size, special, mask_id, mask_prob)
    if objective == "mlm":
        return MaskedLM(PackedWindows(shards, seq_len - 2), masker, cls_id, sep_id, seed)
    pad_id = data.special("pad") if data.special("pad") is not None else 0
    return MaskedLMWithNSP(SentenceChunks(shards, seq_len - 3), masker, cls_id, sep_id, pad_id, seed)


def lengths_of(objective, seq_len: int) -> list[int]:
    chunks = getattr(objective, "chunks", None)
    return list(chunks.lengths) if chunks is not None else [seq_len] * len(objective)


def make_evaluator(objective, batch_size: int, max_sequences: int, device_of):
    """Validation loss, perplexity (and NSP loss / accuracy) on a fixed, evenly spread set of sequences."""
    import numpy as np

    count = min(max_sequences, len(objective))
    indices = sorted(set(np.linspace(0, len(objective) - 1, count).round().astype(int).tolist()))
    objective.set_epoch(0)  # the same masks at every evaluation: comparable numbers

    def evaluate(model: torch.nn.Module) -> EvalResult:
        device = device_of(model)
        sums: dict[str, float] = {}
        tokens = examples = 0
        for start in range(0, len(indices), batch_size):
            batch = {k: v.to(device) for k, v in objective.collate(indices[start:start + batch_size]).items()}
            for key, value in model(**batch).items():
                sums[key] = sums.get(key, 0.0) + float(value)
            tokens += objective.count(batch)
            examples += len(batch["input_ids"])
        sums.pop("loss_sum")
        key = "clm" if "clm" in sums else "mlm"
        loss = sums[key] / max(tokens, 1)
        metrics = {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
        if "nsp" in sums:
            metrics.update(nsp_loss=sums["nsp"] / examples, nsp_accuracy=sums["nsp_correct"] / examples)
        return EvalResult(metrics, -loss)

    return evaluate


def _model_and_arch(args: PretrainArgs, data: Prepared):
    from transformers import set_seed

    from danlu.pretrain import models

    set_seed(args.train.seed)
    if args.init:
        from danlu.assets import resolve_model

        path = resolve_model(args.init)
        from transformers import AutoConfig

        arch = args.resolved_arch(AutoConfig.from_pretrained(str(path)).model_type)
        _check_arch(args.objective, arch)
        model = models.load_init(args.objective, path)
        models.check_tokenizer_matches(path, data.tokenizer(), model.config.vocab_size)
        return model, arch, str(path)
    arch = args.resolved_arch()
    _check_arch(args.objective, arch)
    config = models.model_config(arch, args.size, data.vocab_size, args.seq_len, data.meta["special_ids"],
                                 models.read_overrides(args.config))
    return models.build_model(args.objective, config), arch, None


def _check_arch(objective: str, arch: str) -> None:
    if arch not in ARCHES[objective]:
        raise DanluError(f"--objective {objective} cannot train a {arch} model: it needs --arch "
                         f"{' or '.join(ARCHES[objective])}")


def pretrain(args: PretrainArgs) -> Path:
    """Pretrain on `args.data`, write the artifact to `args.out`, and return its path."""
    check_out(args.out, args.overwrite)  # before the training, not after it
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        from danlu.pretrain.launch import launch

        return launch(args)
    data = load_prepared(args.data)
    train_objective = build_objective(args.objective, data, "train", args.seq_len, args.mask_prob, args.train.seed)
    if len(train_objective) == 0:
        raise DanluError(f"--data {args.data}: the training split is smaller than one sequence of --seq-len "
                         f"{args.seq_len} ({data.stats['tokens']['train']} tokens); lower --seq-len or add text")
    val_objective = build_objective(args.objective, data, "validation", args.seq_len, args.mask_prob,
                                    args.train.seed + 1)
    model, arch, parent = _model_and_arch(args, data)
    positions = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", 0)
    if args.seq_len > positions:
        raise DanluError(f"--seq-len {args.seq_len} is longer than the model's {positions} positions")
    evaluate = None
    if len(val_objective):
        evaluate = make_evaluator(val_objective, args.train.batch_size, args.eval_sequences,
                                  lambda m: next(m.parameters()).device)
    out = Path(args.out)
    run_dir = out.with_name(out.name + ".run")
    stage_args = to_dict(args)
    resume_key = {k: v for k, v in stage_args.items() if k not in NOT_IN_RESUME_KEY}
    resume_key.update(data_fingerprint=data.fingerprint(), arch=arch, config_overrides=read_overrides(args.config))
    from danlu.pretrain.objectives import PretrainingModel

    wrapper = PretrainingModel(model, args.objective, getattr(train_objective, "nsp_weight", 0.0))
    result = train(wrapper, train_objective, lengths_of(train_objective, args.seq_len), args.train, run_dir,
                   evaluate=evaluate, resume=args.resume, resume_key=resume_key,
                   warmup_steps=args.warmup_steps, schedule=args.schedule)
    from accelerate import PartialState

    if PartialState().process_index != 0:
        return out
    from danlu.pretrain.artifact import write_artifact

    write_artifact(out, run_dir, model, data, args, arch, parent, result)
    remove_own_dir(run_dir)
    return out
