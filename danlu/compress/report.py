"""report.html / report.md of `danlu compress`: the chosen variant, an accuracy-vs-latency picture and the
table of variants (rendered by the templates of danlu/report), and the table for the terminal."""

from __future__ import annotations

from pathlib import Path

from danlu.report.page import Figure, Metric, Page, Section, Table, write_page
from danlu.report.sections import arguments, lineage, metric_name

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


def plot_pareto(results: dict) -> bytes | None:
    """Accuracy against batch-1 latency (perplexity against tokens/s for decoders), the Pareto front
    joined, the legend below the axes; None when there is nothing to draw."""
    from danlu.report import charts

    decoder = results.get("kind") == "decoder"
    x_key, y_key = ("tokens_per_second_b1", "perplexity") if decoder else ("latency_ms", "quality")
    rows = [r for r in results["rows"] if r["status"] == "ok" and r.get(x_key) is not None]
    if not rows:
        return None
    plt = charts.pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100, layout="constrained")
    chosen = (results.get("chosen") or {}).get("variant")
    groups = {"chosen": ("tab:red", []), "within the budget": ("tab:blue", []), "over the budget": ("tab:gray", [])}
    for r in rows:
        group = "chosen" if r["variant"] == chosen else (
            "within the budget" if r.get("within_budget", True) else "over the budget")
        groups[group][1].append(r)
    for label, (colour, members) in groups.items():
        if members:
            ax.scatter([r[x_key] for r in members], [r[y_key] for r in members], color=colour, zorder=3, label=label)
    for r in rows:
        ax.annotate(r["variant"], (r[x_key], r[y_key]), fontsize=8, xytext=(4, 4), textcoords="offset points")
    front = pareto_front(rows, x_key, y_key, x_lower_better=not decoder, y_higher_better=not decoder)
    ax.plot([r[x_key] for r in front], [r[y_key] for r in front], "--", color="tab:orange", label="Pareto front")
    if not decoder and rows[0]["variant"] == "original":
        ax.axhline(rows[0]["quality"] - results["max_accuracy_drop"] / 100, color="tab:gray", linestyle=":",
                   label=f"budget: -{results['max_accuracy_drop']} points")
    ax.set_xlabel("new tokens/s at batch 1" if decoder else "latency at batch 1 (ms)")
    ax.set_ylabel("perplexity (lower is better)" if decoder else f"test {results.get('quality_metric', 'accuracy')}")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=5, frameon=False, fontsize=8)
    return charts.png_bytes(fig)


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


HOW_TO_READ = ("Latency is the mean time of one text at batch 1, throughput the sequences per second in batches "
               "of 32 (medians over repeats, same threads). Size is the bytes of the weight files written. Peak "
               "memory is the measuring process's high-water mark (Python, torch and onnxruntime included). "
               "`prune-magnitude` zeroes weights but dense kernels still multiply the zeros: expect no speedup "
               "and no smaller file from it.")


def compress_page(out: Path, results: dict) -> Page:
    """The page of a compression search: the chosen variant's figures, the Pareto picture, every variant."""
    columns = _columns(results)
    decoder = results.get("kind") == "decoder"
    chosen = (results.get("chosen") or {}).get("variant")
    rows = results["rows"]
    chosen_index = next((i for i, r in enumerate(rows) if r["variant"] == chosen), None)
    figures = []
    if chosen_index is not None:
        cells = _cells(rows[chosen_index], columns)
        figures = [Metric("chosen variant", chosen)] + [
            Metric(header, cell) for (header, _, _), cell in zip(columns[2:], cells[2:]) if cell]
    budget = (f"perplexity increase <= {results['max_accuracy_drop']}%" if decoder
              else f"{results.get('quality_metric', 'accuracy')} drop <= {results['max_accuracy_drop']} points")
    facts = [("measured on", f"`{results['eval_data']}`" + ("" if decoder else
                                                            f" test split, {results['test_examples']} texts")),
             ("threads", str(rows[0].get("threads", "?"))),
             ("load average at start", f"{results.get('load_average_1min', 0):.2f} (other work on the machine "
                                       "slows every row alike)")]
    sections = []
    png = plot_pareto(results)
    if png:
        title = "Perplexity vs speed" if decoder else f"{metric_name(results.get('quality_metric', 'accuracy'))} vs latency"
        title = title[0].upper() + title[1:]
        sections.append(Section(title, figure=Figure("pareto.png", png, title.lower() + " of every variant")))
    table = Table([h for h, _, _ in columns], [_cells(r, columns) for r in rows], chosen_index, "(chosen)")
    sections.append(Section("Variants", table=table))
    notes = [f"`{r['variant']}` {r['status']}: {r['reason']}" for r in rows if r.get("reason")]
    if notes:
        sections.append(Section("Skipped and failed", items=notes))
    sections.append(Section("How to read it", text=HOW_TO_READ))
    args = {k: results[k] for k in ("objective", "max_accuracy_drop", "methods", "eval_data", "test_examples")
            if k in results}
    return Page(f"danlu compress: {Path(results['artifact']).name}", f"objective {results['objective']}, "
                f"budget: {budget}", verdict=results.get("verdict", ""), headline=figures, facts=facts,
                sections=sections, lineage=lineage(out, results["artifact"]), arguments=arguments(args))


def write_report(out: Path, results: dict) -> None:
    """Write report.html, report.md and pareto.png into `out`."""
    write_page(out, compress_page(Path(out), results))
