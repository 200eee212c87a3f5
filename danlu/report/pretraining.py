"""report.html / report.md of a pretraining artifact: validation loss against the unigram baseline
first, NSP accuracy where there is one, the curve, lineage and arguments."""

from __future__ import annotations

from pathlib import Path

from danlu.report.page import Metric, Page, format_value, write_page
from danlu.report.sections import arguments, headline, lineage, validation_section
from danlu.report.training import artifact_name, curve_section


def pretraining_page(folder: Path, manifest: dict, history: list[dict]) -> Page:
    """The page of a pretrained artifact."""
    metrics = manifest.get("metrics") or {}
    validation = metrics.get("validation") or {}
    baseline = metrics.get("unigram_entropy")
    figures = headline(validation, "loss", "validation")
    for name, key, note in [("unigram baseline", "unigram_entropy", "entropy of the validation tokens"),
                            ("loss below the baseline", "loss_below_unigram_baseline", "nats/token")]:
        if metrics.get(key) is not None:
            figures.append(Metric(name, format_value(metrics[key]), note))
    data = manifest.get("data") or {}
    stats = data.get("stats") or {}
    tokens = stats.get("tokens") or {}
    facts = [("data", f"`{data.get('source')}`: {format_value(tokens.get('train'))} training tokens, "
                      f"{format_value(tokens.get('validation'))} validation tokens, vocabulary "
                      f"{format_value(stats.get('vocab_size'))}"),
             ("model", f"{manifest.get('arch')}, {format_value(metrics.get('parameters'))} parameters"),
             ("start", f"`{manifest['parent']}`" if manifest.get("parent") else "random weights"),
             ("optimizer steps", format_value(metrics.get("steps"))),
             ("training throughput", f"{metrics.get('train_tokens_per_second', 0):,.1f} tokens/s"),
             ("created", str(manifest.get("created", "")))]
    has_nsp = any("eval_nsp_accuracy" in e for e in history)
    sections = [curve_section(history, "nsp_accuracy" if has_nsp else None, baseline=baseline,
                              baseline_label=f"unigram baseline ({baseline:.3f})" if baseline else "")]
    sections += [s for s in [validation_section(history)] if s]
    return Page(f"danlu pretrain: {manifest.get('objective')} on a {manifest.get('arch')} model — "
                f"{artifact_name(manifest, folder)}",
                "a model is worth something when its validation loss is clearly below the unigram baseline",
                headline=figures, facts=facts, sections=sections,
                lineage=lineage(folder, manifest.get("parent")), arguments=arguments(manifest.get("args")))


def write_pretraining_report(folder: Path, manifest: dict, history: list[dict]) -> None:
    """Write report.html, report.md and curve.png of a pretrained artifact into `folder`."""
    write_page(folder, pretraining_page(Path(folder), manifest, history))
