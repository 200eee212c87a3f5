"""report.md and report.html (with the loss/metric curve as a PNG) for a fine-tune artifact."""

from __future__ import annotations

import base64
import html
from pathlib import Path


def plot_curve(history: list[dict], path: Path, metric: str = "accuracy") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in history if "loss" in e]
    evals = [(e["step"], e[f"eval_{metric}"]) for e in history if f"eval_{metric}" in e]
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    if train:
        ax.plot(*zip(*train), label="training loss", color="tab:blue")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    if evals:
        ax2 = ax.twinx()
        ax2.plot(*zip(*evals), "o-", label=f"validation {metric}", color="tab:orange")
        ax2.set_ylabel(f"validation {metric}")
    fig.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_training_report(folder: Path, manifest: dict, history: list[dict]) -> None:
    metric = manifest.get("primary_metric") or "accuracy"
    plot_curve(history, folder / "curve.png", metric)
    test = manifest["metrics"].get("test", {})
    lines = [f"# danlu {manifest['stage']}: {manifest['task']}", "",
             f"- base model: `{manifest['parent']}`", f"- data: `{manifest['data']['source']}`, "
             f"split sizes {manifest['data']['split']['sizes']}",
             f"- steps: {manifest['metrics']['steps']}, best step {manifest['metrics']['best_step']}",
             f"- training throughput: {manifest['metrics']['train_examples_per_second']} examples/s", ""]
    if test:
        scalars = ", ".join(f"{k} {v:.4f}" for k, v in test.items()
                            if isinstance(v, float) and k not in (metric, "loss"))
        lines += ["## Test metrics", "", f"{metric} **{test[metric]:.4f}**, {scalars} on {test['examples']} examples",
                  "", "| label | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        per_label = test.get("per_class") or test.get("per_type") or {}  # classify: per class; ner: per entity type
        lines += [f"| {k} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
                  for k, v in per_label.items()]
        lines += [""]
    write_markdown_and_html(folder, lines, "Training curve", manifest["args"], "danlu report")


def write_markdown_and_html(folder: Path, lines: list[str], curve_title: str, args: dict, title: str) -> None:
    """report.md (`lines`, then the curve and the stage's arguments) and report.html (the same text, with
    folder/curve.png embedded so the page stands alone)."""
    lines = [*lines, f"## {curve_title}", "", "![curve](curve.png)", "", "## Arguments", "", "```",
             *(f"{k}: {v}" for k, v in args.items()), "```", ""]
    markdown = "\n".join(lines)
    (folder / "report.md").write_text(markdown, encoding="utf-8")
    image = base64.b64encode((folder / "curve.png").read_bytes()).decode()
    body = html.escape(markdown).replace("![curve](curve.png)",
                                         f'</pre><img src="data:image/png;base64,{image}"><pre>')
    (folder / "report.html").write_text(
        f"<!doctype html><meta charset=utf-8><title>{title}</title><pre>{body}</pre>\n", encoding="utf-8")
