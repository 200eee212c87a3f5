"""One page model for every report danlu writes, rendered by one set of Jinja2 templates.

A stage builds a `Page` (headline figures, sections of tables, figures and heat maps, lineage,
arguments) from its manifest and history; `write_page` renders it twice: `STEM.html`, one
self-contained page (styles inline, images as data: URIs, no network), and `STEM.md` for terminals
and diffs (images as PNG files beside it).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

TEMPLATES = Path(__file__).parent / "templates"


@dataclass
class Metric:
    """A headline figure: the numbers a reader looks for first."""

    name: str
    value: str
    note: str = ""


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    highlight: int | None = None  # index of the row to emphasise (the chosen variant)
    note: str = ""                # a word after the highlighted row's first cell, e.g. "(chosen)"


@dataclass
class HeatCell:
    count: int
    share: float       # of the row's total: the colour's strength
    background: str    # CSS colour
    color: str


@dataclass
class Heatmap:
    """A confusion matrix: rows are the true labels, columns the predicted ones."""

    labels: list[str]
    rows: list[list[HeatCell]]


@dataclass
class Figure:
    file: str     # the PNG's name beside report.md
    png: bytes
    alt: str

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode()


@dataclass
class Link:
    name: str
    href: str
    note: str = ""


@dataclass
class Section:
    title: str
    text: str = ""
    items: list[str] = field(default_factory=list)
    table: Table | None = None
    figure: Figure | None = None
    heatmap: Heatmap | None = None


@dataclass
class Page:
    title: str
    subtitle: str = ""
    verdict: str = ""
    headline: list[Metric] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    lineage: list[Link] = field(default_factory=list)
    arguments: list[tuple[str, str]] = field(default_factory=list)


def heatmap(labels: list[str], matrix: list[list[int]]) -> Heatmap:
    """A confusion matrix coloured by each cell's share of its row (its recall for the diagonal)."""
    rows = []
    for counts in matrix:
        total = sum(counts) or 1
        cells = []
        for count in counts:
            share = count / total
            # white -> a deep blue; light text on the darker half
            r, g, b = (round(255 - share * (255 - c)) for c in (31, 78, 160))
            cells.append(HeatCell(count, share, f"rgb({r}, {g}, {b})", "#fff" if share > 0.5 else "#111"))
        rows.append(cells)
    return Heatmap(list(labels), rows)


def format_value(value) -> str:
    """Numbers as a reader wants them: 4 decimals for fractions, thousands separators for counts."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        if value and abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:,.4f}" if abs(value) < 100 else f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.1f}"
    return str(value)


def _environment():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), undefined=StrictUndefined,
                      autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["md_cell"] = lambda text: str(text).replace("|", "\\|").replace("\n", " ")
    env.filters["md_inline"] = _markdown_inline
    return env


def _markdown_inline(text: str):
    """Inline Markdown (`code`, **bold**) of a report's sentences as HTML, by markdown-it-py with raw HTML
    disabled, so the same sentence reads well in report.md and report.html."""
    from markdown_it import MarkdownIt
    from markupsafe import Markup

    return Markup(MarkdownIt("commonmark", {"html": False}).renderInline(str(text)))


def render(page: Page, template: str) -> str:
    """The page through one template (`report.html.j2` or `report.md.j2`)."""
    return _environment().get_template(template).render(page=page, css=(TEMPLATES / "report.css").read_text())


def write_page(folder: str | Path, page: Page, stem: str = "report") -> tuple[Path, Path]:
    """Write STEM.html and STEM.md (and each figure's PNG) into `folder`; return the two paths."""
    from danlu.artifact import atomic_write_text

    folder = Path(folder)
    for section in page.sections:
        if section.figure is not None:
            (folder / section.figure.file).write_bytes(section.figure.png)
    html_path, md_path = folder / f"{stem}.html", folder / f"{stem}.md"
    atomic_write_text(html_path, render(page, "report.html.j2"))
    atomic_write_text(md_path, render(page, "report.md.j2"))
    return html_path, md_path
