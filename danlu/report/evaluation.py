"""The page `danlu evaluate` writes beside its JSON (eval-SPLIT.html / eval-SPLIT.md): the scores of one
artifact on one split, whatever the task."""

from __future__ import annotations

import time
from pathlib import Path

from danlu.report.page import Page, format_value, write_page
from danlu.report.sections import arguments, headline, lineage, metric_name, primary_metric, score_sections

RUN_KEYS = ("artifact", "task", "data", "split", "primary_metric")  # what was scored, not a score


def evaluation_page(folder: Path, result: dict) -> Page:
    """The page of one evaluation: `result` is what `danlu evaluate` wrote as JSON."""
    scores = {k: v for k, v in result.items() if k not in RUN_KEYS}
    primary = primary_metric(result)
    artifact = Path(str(result.get("artifact", "")))
    note = f"{result.get('split', '?')}, {format_value(scores.get('examples'))} examples"
    facts = [("artifact", f"`{artifact}`"), ("data", f"`{result.get('data')}`, split {result.get('split')}"),
             ("task", str(result.get("task", "?"))), ("evaluated", time.strftime("%Y-%m-%dT%H:%M:%S%z"))]
    return Page(f"danlu evaluate: {artifact.name} on {Path(str(result.get('data'))).name} ({result.get('split')})",
                f"primary metric: {metric_name(primary)}", headline=headline(scores, primary, note), facts=facts,
                sections=score_sections(scores), lineage=lineage(folder, str(artifact)),
                arguments=arguments({k: result[k] for k in RUN_KEYS if k in result}))


def write_evaluation_report(json_path: str | Path, result: dict) -> Path:
    """Write the evaluation's page beside its JSON (same name, .html and .md); return the .html path."""
    json_path = Path(json_path)
    html_path, _ = write_page(json_path.parent, evaluation_page(json_path.parent, result), json_path.stem)
    return html_path
