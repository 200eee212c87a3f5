"""The parts reports share, built from plain metric dicts whatever the task: headline figures, score
tables (per class, per entity type), the confusion heat map, the validation table, lineage, arguments.

Metric shapes understood (any task module may add keys; unknown scalars are shown as they are):
classify `{accuracy, macro_f1, loss, examples, per_class: {label: {precision, recall, f1, support}},
confusion_matrix: {labels, matrix}}`, NER `{f1, precision, recall, accuracy, examples, per_type: {...}}`,
QA `{exact_match, f1, examples}`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from danlu.report.page import Link, Metric, Section, Table, format_value, heatmap

METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "f1": "F1", "exact_match": "exact match",
                "precision": "precision", "recall": "recall", "loss": "loss", "perplexity": "perplexity",
                "nsp_accuracy": "NSP accuracy", "nsp_loss": "NSP loss", "support": "support"}
GROUPS = {"per_class": ("Per class", "label"), "per_type": ("Per entity type", "entity type")}
GROUP_COLUMNS = ["precision", "recall", "f1", "support"]  # first, in this order; other keys follow
DEFAULT_PRIMARY = "accuracy"


def metric_name(key: str) -> str:
    """How a metric key reads in a report: `macro_f1` -> `macro-F1`."""
    return METRIC_NAMES.get(key, key.replace("_", " "))


def primary_metric(manifest: dict) -> str:
    """The task's one number (early stopping, best checkpoint, compress budget): the manifest's
    `primary_metric`, accuracy when an older artifact does not say."""
    return manifest.get("primary_metric") or DEFAULT_PRIMARY


def scalars(scores: dict) -> dict[str, float]:
    """The plain numbers of a metrics dict (no tables, no counts)."""
    return {k: v for k, v in scores.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "examples"}


def headline(scores: dict, primary: str, note: str = "") -> list[Metric]:
    """Every scalar score, the primary one first."""
    values = scalars(scores)
    order = ([primary] if primary in values else []) + [k for k in values if k != primary]
    return [Metric(metric_name(k), format_value(values[k]), note) for k in order]


def score_sections(scores: dict) -> list[Section]:
    """A table for each group of per-label scores (per class, per entity type) and the confusion matrix
    as a heat map, in the order the metrics dict holds them."""
    sections = []
    for key, value in scores.items():
        if key == "confusion_matrix" and isinstance(value, dict) and value.get("matrix"):
            sections.append(Section("Confusion matrix", heatmap=heatmap(value["labels"], value["matrix"])))
        elif isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            title, first = GROUPS.get(key, (key.replace("_", " ").capitalize(), "name"))
            keys = {k for row in value.values() for k in row}
            columns = [c for c in GROUP_COLUMNS if c in keys] + sorted(keys - set(GROUP_COLUMNS))
            rows = [[str(name)] + [_cell(row.get(c)) for c in columns] for name, row in value.items()]
            sections.append(Section(title, table=Table([first] + [metric_name(c) for c in columns], rows)))
    return sections


def _cell(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else format_value(value)


def validation_section(history: list[dict]) -> Section | None:
    """Each evaluation during training as a row (the curve's numbers, as text)."""
    evals = [e for e in history if any(k.startswith("eval_") for k in e)]
    if not evals:
        return None
    keys = list(dict.fromkeys(k for e in evals for k in e if k.startswith("eval_")))
    rows = [[format_value(e["step"])] + [format_value(e.get(k)) for k in keys] for e in evals]
    return Section("Validation during training", table=Table(["step"] + [metric_name(k[5:]) for k in keys], rows))


def lineage(folder: str | Path, parent: str | None, depth: int = 8) -> list[Link]:
    """The chain of parent artifacts, nearest first, each linked (to its report when it has one)
    relative to `folder` where they share a root, so the links survive moving a runs folder."""
    links, seen = [], set()
    current = parent
    while current and len(links) < depth and current not in seen:
        seen.add(current)
        path = Path(current)
        manifest = _read(path / "danlu.json")
        target = path / "report.html" if (path / "report.html").exists() else path
        what = " · ".join(str(manifest[k]) for k in ("stage", "task") if manifest.get(k)) or "model folder"
        links.append(Link(path.name or str(path), _href(target, Path(folder)), f"{what} — {path}"))
        current = manifest.get("parent")
    return links


def _href(target: Path, folder: Path) -> str:
    target, folder = target.absolute(), folder.absolute()
    if os.path.commonpath([target, folder]) == target.anchor:
        return target.as_uri()
    relative = os.path.relpath(target, folder)
    return relative + ("/" if target.is_dir() else "")


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def arguments(args: dict) -> list[tuple[str, str]]:
    """A stage's arguments as (name, value) rows; nested values as JSON."""
    return [(k, json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v))
            for k, v in (args or {}).items()]
