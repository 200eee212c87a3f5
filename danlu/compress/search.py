"""`danlu compress`: make every applicable variant, measure each on the user's data, and choose the best
by the objective among those within the accuracy budget.

The search never loses work: each method runs on its own (a method that does not apply is skipped with
its reason, one that crashes is recorded with its error and a log), results.json and the report are
rewritten after every method, and each variant is a complete artifact the moment it appears.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from danlu.artifact import Manifest, atomic_write_text, claim_dir, read_manifest, update_metrics
from danlu.assets import resolve_model
from danlu.compress.args import CompressArgs
from danlu.compress.job import CompressJob, NotApplicable
from danlu.compress.methods import ALL, METHODS, expand_methods  # noqa: F401
from danlu.tasks import task_options
from danlu.errors import DanluError

OPTION_FIELDS = ["train_epochs", "train_max_steps", "train_lr", "train_bf16", "distill_layers", "temperature",
                 "soft_weight", "hidden_weight", "prune_heads", "prune_ffn", "sparsity", "share_groups"]
OBJECTIVES = {  # objective -> (row key, True when larger is better)
    "latency": ("latency_ms", False),
    "throughput": ("throughput", True),
    "size": ("size_mb", False),
}


def check_task_model(path: Path):
    """The task module of an encoder artifact with a task head, or a clear error."""
    from danlu.runtime import task_of
    from danlu.runtime.heads import head_suffix
    from danlu.tasks import TASKS, get_task

    task = task_of(path)
    if task not in TASKS or head_suffix(path) is None and not (path / "model.onnx").exists():
        config = json.loads((path / "config.json").read_text()) if (path / "config.json").exists() else {}
        architectures = config.get("architectures") or []
        raise DanluError(f"{path} has no task head (architectures: {', '.join(architectures) or 'none'}); "
                         "fine-tune it first: danlu finetune --model ... --data ... --out ...")
    return get_task(task)


def compress(args: CompressArgs) -> dict:
    """Run the search; write OUT/variants/*, OUT/results.json, OUT/report.md|html; return the results."""
    from danlu.compress.decoder import compress_decoder
    from danlu.runtime import is_decoder
    from danlu.tasks.base import DataSpec

    parent = resolve_model(args.artifact)
    methods = expand_methods(args.methods)
    if is_decoder(parent):
        return compress_decoder(args, parent)
    task = check_task_model(parent)
    manifest = Manifest.read(parent)
    if not args.eval_data:
        raise DanluError("--eval-data is required for an encoder model (the data to measure its quality on)")
    spec = DataSpec.from_args(args.eval_data, manifest.args)
    data = task.load_data(spec)
    labels = manifest.labels or data.labels
    if task.NAME == "classify" and sorted(data.labels) != sorted(labels):
        raise DanluError(f"{args.eval_data} has labels {', '.join(data.labels)} but the artifact was trained on "
                         f"{', '.join(labels)}; give data with the artifact's labels")
    test = data.splits["test"]
    if not len(test):
        raise DanluError(f"{args.eval_data}: the test split is empty")
    out = Path(args.out)
    claim_dir(out, reuse=args.overwrite or args.reuse_variants,
              how_to_reuse="pass --overwrite to replace them, or --reuse-variants to continue that search")
    (out / "variants").mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "logs", ignore_errors=True)  # logs of an earlier search into the same folder
    measure_args = {"threads": args.threads, "repeats": args.repeats, "latency_samples": args.latency_samples,
                    "throughput_batches": args.throughput_batches, "seed": args.seed}
    context = {"task": task, "spec": spec, "data": data, "labels": labels, "manifest": manifest,
               "measure": measure_args}
    results = {"artifact": str(parent), "eval_data": args.eval_data, "task": task.NAME,
               "quality_metric": task.PRIMARY_METRIC, "objective": args.objective,
               "max_accuracy_drop": args.max_accuracy_drop, "methods": methods, "test_examples": len(test),
               "load_average_1min": os.getloadavg()[0], "rows": [], "chosen": None}
    print(f"measuring the original on {len(test)} test examples ...", file=sys.stderr)
    try:
        original = _measure(parent, context, out / "logs" / "original")
    except RuntimeError as e:
        raise DanluError(f"cannot measure the original {parent}: {e}") from None
    results["rows"].append({"variant": "original", "method": "original", "status": "ok", "path": str(parent),
                            **original})
    made: dict[str, Path | BaseException] = {"": parent}  # variant key -> its folder, or the error it raised
    for name in methods:
        row = _run_method(name, made, context, args, out)
        results["rows"].append(row)
        _finish(results, args, out)
        print(f"{name}: {row['status']}" + (f" ({row['reason']})" if row.get("reason") else ""), file=sys.stderr)
    results = _finish(results, args, out)
    from danlu.compress.report import format_table

    print(format_table(results))
    print(results["verdict"])
    print(f"report: {out / 'report.md'}")
    return results


def _measure(folder: Path, context: dict, work: Path) -> dict:
    from dataclasses import asdict

    from danlu.compress.measure import measure_in_subprocess

    return measure_in_subprocess(folder, context["task"].NAME, asdict(context["spec"]), work, **context["measure"])


def made_with(folder: Path, parent: Path, method: str, options: dict) -> bool:
    """True when `folder` is a complete variant made by `method` from `parent` with these options."""
    try:
        manifest = read_manifest(folder)  # {} when there is no finished variant there
    except DanluError:  # an unreadable danlu.json: make the variant again
        return False
    recorded = (manifest.get("args") or {}).get("compress") or {}
    return (manifest.get("stage") == "compress" and manifest.get("method") == method
            and Path(str(manifest.get("parent", ""))).resolve() == Path(parent).resolve()
            and json.loads(json.dumps(recorded)) == json.loads(json.dumps({"method": method, **options})))


def _run_method(name: str, made: dict[str, Path], context: dict, args: CompressArgs, out: Path) -> dict:
    """Make (or reuse) each stage of `name` (A+B: B applied to A's variant), then measure the result."""
    row: dict = {"variant": name, "method": name}
    parts = name.split("+")
    started = time.perf_counter()
    try:
        for i, part in enumerate(parts):
            key = "+".join(parts[: i + 1])
            if isinstance(made.get(key), BaseException):  # a stage that already failed in an earlier row
                raise NotApplicable(f"{key} failed above: {made[key]}")
            if key in made:
                continue
            options = {k: getattr(args, k) for k in OPTION_FIELDS}
            previous = out / "variants" / key
            if args.reuse_variants and made_with(previous, made["+".join(parts[:i])], part, options):
                print(f"{key}: reusing {previous}", file=sys.stderr)
                made[key] = previous
                continue
            task, recorded = context["task"], context["manifest"].args
            job = CompressJob(parent=made["+".join(parts[:i])], out=out / "variants" / key, data=context["data"],
                              labels=context["labels"], task=task.NAME, max_length=int(recorded.get("max_length", 128)),
                              calibration_samples=args.calibration_samples, seed=args.seed, threads=args.threads,
                              options=options, task_options=task_options(task, recorded))
            module, function = METHODS[part]
            try:
                made[key] = Path(getattr(importlib.import_module(module), function)(job))
            except NotApplicable:
                raise
            except Exception as e:
                made[key] = e
                raise
        row["make_seconds"] = round(time.perf_counter() - started, 2)
        folder = made[name]
        row["path"] = str(folder)
        row.update(_measure(folder, context, out / "logs" / name))
        row["status"] = "ok"
        scores = {k: row[k] for k in ("accuracy", "macro_f1", "f1", "precision", "recall", "exact_match") if k in row}
        update_metrics(folder, {"compress": {k: v for k, v in row.items() if k not in ("path",)}, "test": scores})
    except NotApplicable as e:
        row.update(status="skipped", reason=str(e))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # one method's crash must not lose the others' results
        log = out / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(traceback.format_exc())
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        row.update(status="failed", reason=f"{type(e).__name__}: {message}"[:300], log=str(log))
    return row


def _finish(results: dict, args: CompressArgs, out: Path) -> dict:
    """Compute drops, budget and choice; write results.json, the report and the `chosen` link."""
    from danlu.compress.report import write_report

    rows = results["rows"]
    base = rows[0]
    key, larger = OBJECTIVES[args.objective]
    for row in rows:
        if row["status"] != "ok":
            continue
        row["accuracy_drop"] = round(100 * (base["quality"] - row["quality"]), 4)  # points of the primary metric
        row["within_budget"] = row["accuracy_drop"] <= args.max_accuracy_drop + 1e-9
        row["latency_speedup"] = base["latency_ms"] / row["latency_ms"]
        row["throughput_speedup"] = row["throughput"] / base["throughput"]
        row["size_ratio"] = row["size_mb"] / base["size_mb"] if base["size_mb"] else None
    candidates = [r for r in rows if r["status"] == "ok" and r["within_budget"]]
    best = max(candidates, key=lambda r: r[key] if larger else -r[key])
    variants_in_budget = [r for r in candidates if r["variant"] != "original"]
    results["chosen"] = {"variant": best["variant"], "path": best["path"]}
    if not variants_in_budget:
        results["verdict"] = (f"no variant is within --max-accuracy-drop {args.max_accuracy_drop} points; "
                              f"keeping the original ({base['path']})")
    elif best["variant"] == "original":
        results["verdict"] = (f"no variant within budget beats the original on {args.objective}; keeping the original")
    else:
        results["verdict"] = (f"chosen: {best['variant']} ({args.objective} {_fmt(best, key)} vs {_fmt(base, key)} "
                              f"for the original; accuracy drop {best['accuracy_drop']:.2f} points) at {best['path']}")
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    link = out / "chosen"
    target = os.path.relpath(Path(best["path"]).resolve(), out.resolve())
    tmp = out / ".chosen.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    write_report(out, results)
    return results


def _fmt(row: dict, key: str) -> str:
    unit = {"latency_ms": " ms", "throughput": " seq/s", "size_mb": " MB"}[key]
    return f"{row[key]:.2f}{unit}"
