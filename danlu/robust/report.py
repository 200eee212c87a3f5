"""attack.html from attack.json's content (Jinja2 template, everything inline)."""

from __future__ import annotations

import functools
from pathlib import Path


@functools.cache
def environment():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    return Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                       autoescape=select_autoescape(["html", "j2"]), undefined=StrictUndefined)


def attack_page(report: dict) -> str:
    """The page: metrics, constraints, and the successful adversarial examples with changes marked."""
    successes = [r for r in report["results"] if r["status"] == "success"]
    return environment().get_template("attack.html.j2").render(r=report, m=report["metrics"], successes=successes)
