"""`danlu explain`: one text -> one page + JSON; a data split -> a summary page linking per-example pages."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from danlu.artifact import atomic_dir, atomic_write_text
from danlu.errors import DanluError
from danlu.explain.args import ExplainArgs
from danlu.explain.loading import load_differentiable, split_examples
from danlu.explain.page import example_page, summary_page


def _word(token: str) -> str:
    return token[2:] if token.startswith("##") else token.lstrip("Ġ▁")


def top_tokens(explanations, tokenizer, k: int = 15) -> dict[str, list[dict]]:
    """Per predicted class, the tokens whose attributions (to that class) sum highest over the examples."""
    special = set(tokenizer.all_special_tokens)
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for e in explanations:
        for token, a in zip(e.tokens, e.attributions):
            if token not in special:
                totals[e.target][_word(token)] += a
                counts[e.target][_word(token)] += 1
    return {label: [{"token": t, "total": round(v, 6), "count": counts[label][t]}
                    for t, v in sorted(words.items(), key=lambda kv: -kv[1])[:k]]
            for label, words in sorted(totals.items())}


SUMMARY_TASKS = ("classify",)  # a summary page ranks tokens per class: classifiers only


def _report(e) -> None:
    """The prediction and, per attributed output, how far to trust its attributions."""
    head = f"prediction: {e.prediction}" + (f" ({e.probabilities[e.prediction]:.4f})"
                                            if e.prediction in e.probabilities else "")
    if len(e.targets) == 1:
        print(f"{head}; attributions to {e.target}, {e.steps} steps, convergence delta {e.convergence_delta:.4g}")
        return
    print(head)
    for t in e.targets:
        print(f"  attributions to {t['name']} ({t['label']}), {e.steps} steps, "
              f"convergence delta {t['convergence_delta']:.4g}")


def explain(args: ExplainArgs) -> Path:
    """Write the page(s) and JSON; return the path of the (summary) page."""
    from danlu.explain.attribution import explain_subject
    from danlu.explain.targets import explain_input

    loaded, notes = load_differentiable(args.artifact, args.device or None)
    model, tok = loaded.model, loaded.tokenizer

    def explain_one(text: str, **request):
        subject = explain_input(loaded, text=text, target=args.target, max_new_tokens=args.max_new_tokens,
                                **request)
        return explain_subject(model, tok, subject, loaded.task, args.steps, args.internal_batch_size, args.bf16)

    if not args.data:
        e = explain_one(args.text, question=args.question, context=args.context)
        out = Path(args.out or "explain.html")
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out.with_suffix(".json"), json.dumps(
            {"artifact": str(loaded.path), "notes": notes, **e.to_dict()}) + "\n")
        atomic_write_text(out, example_page(e, str(args.artifact), notes))
        for note in notes:
            print(f"note: {note}")
        _report(e)
        print(f"wrote {out} and {out.with_suffix('.json')}")
        return out
    if loaded.task not in SUMMARY_TASKS:
        raise DanluError(f"--data writes a summary per class, for classifiers; this is a {loaded.task} model: "
                         "explain one input at a time")
    texts, labels = split_examples(loaded, args.data, args.split, args.n)
    from tqdm.auto import tqdm

    out = Path(args.out or "explain")
    explanations = []
    for text in tqdm(texts, desc="explaining", unit="ex", leave=False, dynamic_ncols=True):
        explanations.append(explain_one(text))
    rows = [{"text": t, "label": y, "prediction": e.prediction, "delta": e.convergence_delta,
             "page": f"examples/{i:04d}.html"} for i, (t, y, e) in enumerate(zip(texts, labels, explanations))]
    top = top_tokens(explanations, tok)
    mean_delta = sum(e.convergence_delta for e in explanations) / len(explanations)
    with atomic_dir(out) as tmp:
        (tmp / "examples").mkdir()
        for row, e in zip(rows, explanations):
            (tmp / row["page"]).write_text(example_page(e, str(args.artifact), notes, back="../index.html"),
                                           encoding="utf-8")
            (tmp / row["page"]).with_suffix(".json").write_text(json.dumps(e.to_dict()) + "\n", encoding="utf-8")
        summary = {"artifact": str(loaded.path), "data": args.data, "split": args.split, "n": len(texts),
                   "steps": args.steps, "mean_convergence_delta": mean_delta, "notes": notes,
                   "accuracy_on_these": sum(r["label"] == r["prediction"] for r in rows) / len(rows),
                   "top_tokens": top, "examples": rows}
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        (tmp / "index.html").write_text(summary_page(
            artifact=str(args.artifact), data=args.data, split=args.split, examples=rows, top=top,
            steps=args.steps, mean_delta=mean_delta, notes=notes), encoding="utf-8")
    print(f"{len(texts)} examples explained, mean convergence delta {mean_delta:.4g}", file=sys.stderr)
    print(f"wrote {out / 'index.html'}")
    return out / "index.html"
