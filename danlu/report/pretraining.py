"""report.md and report.html for a pretraining artifact: training and validation loss against the
unigram baseline, and NSP accuracy where there is one."""

from __future__ import annotations

from pathlib import Path

from danlu.report.training import write_markdown_and_html


def plot_pretraining(history: list[dict], baseline: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in history if "loss" in e]
    evals = [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e]
    nsp = [(e["step"], e["eval_nsp_accuracy"]) for e in history if "eval_nsp_accuracy" in e]
    fig, ax = plt.subplots(figsize=(7, 3.8), dpi=100)
    if train:
        ax.plot(*zip(*train), label="training loss", color="tab:blue", linewidth=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="validation loss", color="tab:green")
    if baseline:
        ax.axhline(baseline, linestyle="--", color="gray", label=f"unigram baseline ({baseline:.2f})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    if nsp:
        ax2 = ax.twinx()
        ax2.plot(*zip(*nsp), "s-", label="NSP accuracy", color="tab:orange")
        ax2.set_ylabel("NSP accuracy")
        ax2.set_ylim(0.4, 1.0)
    fig.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_pretraining_report(folder: Path, manifest: dict, history: list[dict]) -> None:
    metrics = manifest["metrics"]
    plot_pretraining(history, metrics.get("unigram_entropy"), folder / "curve.png")
    val = metrics.get("validation", {})
    stats = manifest["data"]["stats"]
    lines = [f"# danlu pretrain: {manifest['objective']} on a {manifest['arch']} model", "",
             f"- data: `{manifest['data']['source']}`: {stats['tokens']['train']:,} training tokens, "
             f"{stats['tokens']['validation']:,} validation tokens, vocabulary {stats['vocab_size']}",
             f"- parameters: {metrics['parameters']:,}; steps: {metrics['steps']}; "
             f"throughput {metrics['train_tokens_per_second']} tokens/s", ""]
    if val:
        lines += ["## Validation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in val.items()]
        if metrics.get("unigram_entropy"):
            lines += [f"| unigram baseline (entropy of the validation tokens) | {metrics['unigram_entropy']:.4f} |",
                      f"| loss below the baseline | {metrics.get('loss_below_unigram_baseline', 0):.4f} |"]
        lines += [""]
    write_markdown_and_html(folder, lines, "Curves", manifest["args"], "danlu pretraining report")
