"""report.html / report.md of a fine-tuned artifact, whatever its task: test scores first (the task's
primary metric leading), per-label tables and the confusion heat map where the task has them, the
training curve, the lineage and the arguments."""

from __future__ import annotations

from pathlib import Path

from danlu.report import charts
from danlu.report.page import Figure, Metric, Page, Section, format_value, write_page
from danlu.report.sections import (arguments, headline, lineage, metric_name, primary_metric, score_sections,
                                   validation_section)


def curve_section(history: list[dict], metric: str | None, **baseline) -> Section:
    """The training curve as a figure section (written as curve.png beside report.md)."""
    label = metric_name(metric) if metric else ""
    png = charts.training_curve(history, metric, label, **baseline)
    what = "training and validation loss" + (f" and validation {label}" if metric else "")
    return Section("Training curve", figure=Figure("curve.png", png, f"{what} against the optimizer step"))


def artifact_name(manifest: dict, folder: Path) -> str:
    """The artifact's folder name (the report is written in a temporary sibling, so ask the arguments)."""
    out = (manifest.get("args") or {}).get("out")
    return Path(out).name if out else folder.name


def training_page(folder: Path, manifest: dict, history: list[dict]) -> Page:
    """The page of a fine-tuned artifact (see the module docstring)."""
    metrics = manifest.get("metrics") or {}
    primary = primary_metric(manifest)
    test = metrics.get("test") or {}
    best = metrics.get("best_validation") or {}
    if test:
        figures = headline(test, primary, f"test, {format_value(test.get('examples'))} examples")
    else:
        figures = headline(best, primary, "best validation")
    if test and primary in best:
        figures.append(Metric(f"validation {metric_name(primary)}", format_value(best[primary]),
                              f"best, at step {format_value(metrics.get('best_step'))}"))
    data = manifest.get("data") or {}
    sizes = (data.get("split") or {}).get("sizes")
    facts = [("base model", f"`{manifest.get('parent')}`"),
             ("data", f"`{data.get('source')}`" + (f", split {_sizes(sizes)}" if sizes else "")),
             ("labels", ", ".join(map(str, manifest.get("labels") or [])) or "—"),
             ("optimizer steps", f"{format_value(metrics.get('steps'))} (best at step "
                                 f"{format_value(metrics.get('best_step'))})"),
             ("training throughput", f"{metrics.get('train_examples_per_second', 0):,.1f} examples/s"),
             ("precision", str(metrics.get("precision", "fp32"))),
             ("LoRA", "yes" if manifest.get("lora") else "no"),
             ("created", str(manifest.get("created", "")))]
    sections = score_sections(test) + [curve_section(history, primary)]
    sections += [s for s in [validation_section(history)] if s]
    task = manifest.get("task", "?")
    return Page(f"danlu {manifest.get('stage', 'finetune')}: {task} — {artifact_name(manifest, folder)}",
                f"primary metric: {metric_name(primary)}", headline=figures, facts=facts, sections=sections,
                lineage=lineage(folder, manifest.get("parent")), arguments=arguments(manifest.get("args")))


def _sizes(sizes: dict) -> str:
    return " / ".join(f"{format_value(n)} {name}" for name, n in sizes.items())


def write_training_report(folder: Path, manifest: dict, history: list[dict]) -> None:
    """Write report.html, report.md and curve.png of a fine-tuned artifact into `folder`."""
    write_page(folder, training_page(Path(folder), manifest, history))
