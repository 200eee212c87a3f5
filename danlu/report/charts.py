"""The pictures of the reports, drawn with matplotlib as PNG bytes; legends sit outside the data."""

from __future__ import annotations

import io


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    pyplot().close(fig)
    return buffer.getvalue()


def series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the history entries that hold `key`."""
    points = [(e["step"], e[key]) for e in history if e.get(key) is not None]
    return [s for s, _ in points], [v for _, v in points]


def training_curve(history: list[dict], metric: str | None = None, metric_label: str = "",
                   baseline: float | None = None, baseline_label: str = "") -> bytes:
    """Training loss, validation loss (`eval_loss`) and the task's `metric` (`eval_<metric>`, right axis)
    against the optimizer step; `baseline` draws a horizontal reference loss. The legend sits below the
    axes, so it never covers a line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=100, layout="constrained")
    steps, values = series(history, "loss")
    if steps:
        ax.plot(steps, values, label="training loss", color="tab:blue", linewidth=1.2)
    steps, values = series(history, "eval_loss")
    if steps:
        ax.plot(steps, values, "o-", label="validation loss", color="tab:green")
    if baseline:
        ax.axhline(baseline, linestyle="--", color="gray", label=baseline_label or f"baseline ({baseline:.3f})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    steps, values = series(history, f"eval_{metric}") if metric else ([], [])
    if steps:
        right = ax.twinx()
        right.plot(steps, values, "s-", label=f"validation {metric_label or metric}", color="tab:orange")
        right.set_ylabel(metric_label or metric)
    if any(a.get_legend_handles_labels()[0] for a in fig.axes):
        fig.legend(loc="outside lower center", ncols=4, frameon=False)
    return png_bytes(fig)
