"""The pretraining artifact: a model `from_pretrained` opens, its tokenizer framed for the architecture,
danlu.json (with the unigram baseline beside the validation loss), the curve and a report."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch

from danlu.artifact import atomic_dir, write_manifest
from danlu.config import to_dict
from danlu.pretrain.data import Prepared
from danlu.pretrain.models import count_parameters

TASKS = {"mlm": "mlm", "mlm+nsp": "mlm", "clm": "causal-lm"}


def final_metrics(result, data: Prepared, args, model: torch.nn.Module) -> dict:
    evals = [e for e in result.history if "eval_loss" in e]
    last = evals[-1] if evals else {}
    tokens_per_sequence = args.seq_len
    metrics = {
        "steps": result.steps,
        "parameters": count_parameters(model),
        "train_sequences": result.train_examples,
        "train_tokens_per_second": round(result.train_examples * tokens_per_sequence / result.train_seconds, 1)
        if result.train_seconds else 0.0,
        "train_seconds": round(result.train_seconds, 2),
        "validation": {k[len("eval_"):]: v for k, v in last.items() if k.startswith("eval_")},
        "unigram_entropy": data.stats.get("unigram_entropy"),
        "unigram_cross_entropy": data.stats.get("unigram_cross_entropy"),
    }
    if last and metrics["unigram_entropy"]:
        metrics["loss_below_unigram_baseline"] = round(metrics["unigram_entropy"] - last["eval_loss"], 4)
    return metrics


def write_artifact(out: Path, run_dir: Path, model: torch.nn.Module, data: Prepared, args, arch: str,
                   parent: str | None, result) -> dict:
    from danlu.data.tokenizer import set_post_processor
    from danlu.report.pretraining import write_pretraining_report

    tokenizer = data.tokenizer()
    if data.meta["tokenizer"]["trained"]:
        set_post_processor(tokenizer, "bert" if arch == "bert" else "causal")
    metrics = final_metrics(result, data, args, model)
    with atomic_dir(out, args.overwrite) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if (run_dir / "metrics.jsonl").exists():
            shutil.copy(run_dir / "metrics.jsonl", tmp / "metrics.jsonl")
        manifest = write_manifest(
            tmp, task=TASKS[args.objective], stage="pretrain", args=to_dict(args), parent=parent,
            data_fingerprint=data.fingerprint(), metrics=metrics, objective=args.objective, arch=arch,
            data={"source": str(data.path), "stats": data.stats})
        write_pretraining_report(tmp, manifest, result.history)
    val = metrics["validation"]
    if val:
        extra = f", NSP accuracy {val['nsp_accuracy']:.3f}" if "nsp_accuracy" in val else ""
        print(f"validation loss {val['loss']:.4f} (perplexity {val['perplexity']:.1f}){extra}; unigram "
              f"baseline {metrics['unigram_entropy']:.4f} (perplexity {math.exp(metrics['unigram_entropy']):.1f})")
    print(f"artifact: {out}")
    return manifest
