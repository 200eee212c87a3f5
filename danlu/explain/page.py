"""HTML pages (Jinja2 templates in danlu/explain/templates; everything inline, nothing fetched)."""

from __future__ import annotations

import functools
from pathlib import Path

from danlu.explain.attribution import Explanation


def heat(value: float | None, scale: float) -> str:
    """A CSS colour for an attribution: red for positive, blue for negative, alpha by magnitude; none for a
    token outside the attributed output's input (a decoder's later tokens)."""
    if value is None:
        return "transparent"
    alpha = min(1.0, abs(value) / scale) if scale > 0 else 0.0
    return f"rgba(220, 40, 30, {alpha:.3f})" if value >= 0 else f"rgba(30, 90, 220, {alpha:.3f})"


@functools.cache
def environment():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                      autoescape=select_autoescape(["html", "j2"]), undefined=StrictUndefined)
    env.filters["heat"] = heat
    env.policies["json.dumps_kwargs"] = {"sort_keys": False}  # probabilities keep their order (label or rank)
    return env


def example_page(e: Explanation, artifact: str, notes: list[str], back: str = "") -> str:
    """The page of one explained text."""
    scale = max((abs(a) for a in e.attributions if a is not None), default=0.0)
    n_layers = len(e.attentions)
    n_heads = len(e.attentions[0]) if n_layers else 0
    return environment().get_template("example.html.j2").render(
        e=e, e_dict=e.to_dict(), tokens=list(zip(e.tokens, e.attributions)), scale=scale, artifact=artifact,
        notes=notes, back=back, n_layers=n_layers, n_heads=n_heads,
        position=e.targets[0]["position"] if e.targets else -1)


def summary_page(**values) -> str:
    """The page over a data split: top tokens per class and links to each example's page."""
    return environment().get_template("summary.html.j2").render(**values)
