"""`danlu runs [DIR]`: the artifacts under a folder, newest first, so a user finds what they made last week."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from danlu.config import arg
from danlu.errors import DanluError
from danlu.report.page import format_value
from danlu.report.sections import metric_name, primary_metric

SKIP_DIRS = {"node_modules", "site-packages", "__pycache__", "checkpoints", "tensorboard", "mlartifacts"}


@dataclass
class RunsArgs:
    """List the artifacts under a folder (task, stage, parent, primary metric, date), newest first."""

    dir: str = arg(".", "folder to search (recursively) for artifacts, i.e. folders with a danlu.json",
                   positional=True)
    json: bool = arg(False, "print one JSON object per artifact instead of a table")


def find_artifacts(root: Path) -> list[Path]:
    """Every folder under `root` holding a danlu.json; hidden folders (atomic writes in progress), run
    folders (OUT.run) and the trackers' folders are skipped."""
    found = []
    for folder, dirs, files in os.walk(root):
        if "danlu.json" in files:
            found.append(Path(folder))
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not d.endswith(".run") and d not in SKIP_DIRS)
    return found


def headline_metric(manifest: dict) -> tuple[str, float] | None:
    """The number that says how good an artifact is: the task's primary metric on the test split (or as
    measured by compress), else the validation loss of a pretrained model, else a decoder's perplexity."""
    metrics = manifest.get("metrics") or {}
    primary = primary_metric(manifest)
    compress = metrics.get("compress") or {}
    for scores in (metrics.get("test") or {}, compress, metrics):
        if isinstance(scores.get(primary), (int, float)):
            return metric_name(primary), scores[primary]
    if isinstance((metrics.get("validation") or {}).get("loss"), (int, float)):
        return "validation loss", metrics["validation"]["loss"]
    if isinstance(compress.get("perplexity"), (int, float)):
        return "perplexity", compress["perplexity"]
    return None


def describe(folder: Path, root: Path) -> dict:
    """One line of the listing."""
    try:
        manifest = json.loads((folder / "danlu.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = {}
    created = _parse_date(manifest.get("created")) or (folder / "danlu.json").stat().st_mtime
    metric = headline_metric(manifest)
    return {"path": str(folder.relative_to(root)) if folder != root else ".", "task": manifest.get("task"),
            "stage": manifest.get("stage"), "method": manifest.get("method"), "parent": manifest.get("parent"),
            "metric": metric[0] if metric else None, "value": metric[1] if metric else None,
            "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(created)), "timestamp": created}


def _parse_date(text) -> float | None:
    try:
        return datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return None


def list_runs(args: RunsArgs) -> list[dict]:
    """Print the artifacts under args.dir, newest first; return them."""
    root = Path(args.dir)
    if not root.is_dir():
        raise DanluError(f"no such folder: {root}")
    rows = sorted((describe(f, root) for f in find_artifacts(root)), key=lambda r: -r["timestamp"])
    if args.json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return rows
    if not rows:
        print(f"no artifacts (folders with a danlu.json) under {root}")
        return rows
    table = [["created", "task", "stage", "metric", "path", "parent"]]
    for r in rows:
        stage = r["stage"] or "?" if not r["method"] else f"{r['stage']} ({r['method']})"
        metric = f"{r['metric']} {format_value(r['value'])}" if r["metric"] else ""
        parent = _short(r["parent"], root)
        table.append([r["created"], r["task"] or "?", stage, metric, r["path"], parent])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    return rows


def _short(parent: str | None, root: Path) -> str:
    """A parent as the user would type it: relative to DIR when it is inside it."""
    if not parent:
        return ""
    try:
        return str(Path(parent).absolute().relative_to(root.absolute()))
    except ValueError:
        return parent
