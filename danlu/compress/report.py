"""report.md / report.html of `danlu compress`: the table of variants and an accuracy-vs-latency picture."""

from __future__ import annotations

import base64
import html
from pathlib import Path

COLUMNS = [  # header, row key, format
    ("variant", "variant", "{}"),
    ("status", "status", "{}"),
    ("accuracy", "quality", "{:.4f}"),  # the header names the task's primary metric (see _columns)
    ("drop (pts)", "accuracy_drop", "{:+.2f}"),
    ("latency b1 (ms)", "latency_ms", "{:.2f}"),
    ("speedup b1", "latency_speedup", "{:.2f}x"),
    ("throughput b32 (seq/s)", "throughput", "{:.1f}"),
    ("speedup b32", "throughput_speedup", "{:.2f}x"),
    ("size (MB)", "size_mb", "{:.2f}"),
    ("size ratio", "size_ratio", "{:.0%}"),
    ("peak memory (MB)", "peak_memory_mb", "{:.0f}"),
]
DECODER_COLUMNS = [
    ("variant", "variant", "{}"),
    ("status", "status", "{}"),
    ("perplexity", "perplexity", "{:.3f}"),
    ("ppl change", "perplexity_change_pct", "{:+.2f}%"),
    ("tok/s b1", "tokens_per_second_b1", "{:.1f}"),
    ("tok/s b16", "tokens_per_second_b16", "{:.1f}"),
    ("size (MB)", "size_mb", "{:.1f}"),
    ("peak memory (MB)", "peak_memory_mb", "{:.0f}"),
]


def _cells(row: dict, columns) -> list[str]:
    cells = []
    for _, key, fmt in columns:
        value = row.get(key)
        cells.append("" if value is None else fmt.format(value))
    return cells


def _columns(results: dict):
    if results.get("kind") == "decoder":
        return DECODER_COLUMNS
    metric = results.get("quality_metric", "accuracy")
    return [(metric if key == "quality" else header, key, fmt) for header, key, fmt in COLUMNS]


def format_table(results: dict) -> str:
    """The table as aligned text for the terminal; skipped/failed rows give their reason."""
    columns = _columns(results)
    rows = [[h for h, _, _ in columns]] + [_cells(r, columns) for r in results["rows"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    for row in results["rows"]:
        if row.get("reason"):
            lines.append(f"  {row['variant']}: {row['status']}: {row['reason']}")
    return "\n".join(lines)


def markdown_table(results: dict) -> str:
    columns = _columns(results)
    chosen = (results.get("chosen") or {}).get("variant")
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in results["rows"]:
        cells = _cells(row, columns)
        if row["variant"] == chosen:
            cells[0] = f"**{cells[0]}** (chosen)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_pareto(results: dict, path: Path) -> bool:
    """Accuracy against batch-1 latency, the Pareto front joined; False when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    decoder = results.get("kind") == "decoder"
    x_key, y_key = ("tokens_per_second_b1", "perplexity") if decoder else ("latency_ms", "quality")
    rows = [r for r in results["rows"] if r["status"] == "ok" and r.get(x_key) is not None]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    chosen = (results.get("chosen") or {}).get("variant")
    for r in rows:
        colour = "tab:red" if r["variant"] == chosen else ("tab:blue" if r.get("within_budget", True) else "tab:gray")
        ax.scatter(r[x_key], r[y_key], color=colour, zorder=3)
        ax.annotate(r["variant"], (r[x_key], r[y_key]), fontsize=8, xytext=(4, 4), textcoords="offset points")
    front = pareto_front(rows, x_key, y_key, x_lower_better=not decoder, y_higher_better=not decoder)
    ax.plot([r[x_key] for r in front], [r[y_key] for r in front], "--", color="tab:orange", label="Pareto front")
    if not decoder:
        base = rows[0]["quality"] if rows[0]["variant"] == "original" else None
        if base is not None:
            ax.axhline(base - results["max_accuracy_drop"] / 100, color="tab:gray", linestyle=":",
                       label=f"budget: -{results['max_accuracy_drop']} points")
    ax.set_xlabel("new tokens/s at batch 1" if decoder else "latency at batch 1 (ms)")
    ax.set_ylabel("perplexity (lower is better)" if decoder else f"test {results.get('quality_metric', 'accuracy')}")
    ax.set_title("variants (red: chosen, grey: over the accuracy budget)")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def pareto_front(rows: list[dict], x_key: str, y_key: str, x_lower_better: bool = True,
                 y_higher_better: bool = True) -> list[dict]:
    """Rows no other row beats on both axes, sorted by x."""
    def better_or_equal(a, b):
        x = a[x_key] <= b[x_key] if x_lower_better else a[x_key] >= b[x_key]
        y = a[y_key] >= b[y_key] if y_higher_better else a[y_key] <= b[y_key]
        return x and y

    front = [r for r in rows if not any(o is not r and better_or_equal(o, r) and
                                        (o[x_key], o[y_key]) != (r[x_key], r[y_key]) for o in rows)]
    return sorted(front, key=lambda r: r[x_key])


def write_report(out: Path, results: dict) -> None:
    """Write report.md, report.html and pareto.png into `out`."""
    has_plot = plot_pareto(results, out / "pareto.png")
    decoder = results.get("kind") == "decoder"
    budget = (f"perplexity increase <= {results['max_accuracy_drop']}%" if decoder
              else f"{results.get('quality_metric', 'accuracy')} drop <= {results['max_accuracy_drop']} points")
    lines = [f"# danlu compress: {results['artifact']}", "",
             f"- objective: **{results['objective']}**, budget: {budget}",
             f"- measured on: `{results['eval_data']}`" + ("" if decoder else f" test split, {results['test_examples']} texts"),
             f"- threads: {results['rows'][0].get('threads', '?')}, 1-minute load average at start "
             f"{results.get('load_average_1min', 0):.2f} (other work on the machine slows every row alike)",
             "", f"**{results.get('verdict', '')}**", "", markdown_table(results), ""]
    notes = [r for r in results["rows"] if r.get("reason")]
    if notes:
        lines += ["## Skipped and failed", ""] + [f"- `{r['variant']}` {r['status']}: {r['reason']}" for r in notes] + [""]
    lines += ["## How to read it", "",
              "Latency is the mean time of one text at batch 1, throughput the sequences per second in batches "
              "of 32 (medians over repeats, same threads). Size is the bytes of the weight files written. Peak "
              "memory is the measuring process's high-water mark (Python, torch and onnxruntime included). "
              "`prune-magnitude` zeroes weights but dense kernels still multiply the zeros: expect no speedup "
              "and no smaller file from it.", ""]
    if has_plot:
        lines += ["## Accuracy vs latency" if not decoder else "## Perplexity vs speed", "", "![pareto](pareto.png)", ""]
    markdown = "\n".join(lines)
    (out / "report.md").write_text(markdown, encoding="utf-8")
    body = html.escape(markdown)
    if has_plot:
        image = base64.b64encode((out / "pareto.png").read_bytes()).decode()
        body = body.replace("![pareto](pareto.png)", f'</pre><img src="data:image/png;base64,{image}"><pre>')
    (out / "report.html").write_text("<!doctype html><meta charset=utf-8><title>danlu compress</title>"
                                     f"<pre>{body}</pre>\n", encoding="utf-8")
