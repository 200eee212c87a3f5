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

from danlu.artifact import atomic_write_text, claim_dir, read_manifest, resolve_model, update_metrics
from danlu.compress.args import CompressArgs
from danlu.compress.job import CompressJob, NotApplicable
from danlu.errors import DanluError, did_you_mean

# name -> (module, function); imported only when the method runs.
METHODS = {
    "bf16": ("danlu.compress.quantize", "bf16"),
    "int8-dynamic": ("danlu.compress.quantize", "int8_dynamic"),
    "int8-static": ("danlu.compress.quantize", "int8_static"),
    "int8-weight-only": ("danlu.compress.quantize", "weight_only"),
    "int4-weight-only": ("danlu.compress.quantize", "weight_only"),
    "onnx": ("danlu.compress.quantize", "onnx_fp32"),
    "onnx-int8": ("danlu.compress.quantize", "onnx_int8"),
    "prune-structured": ("danlu.compress.prune", "prune_structured"),
    "prune-magnitude": ("danlu.compress.prune", "prune_magnitude"),
    "distill": ("danlu.compress.distill", "distill"),
    "share-layers": ("danlu.compress.share", "share_layers"),
}
# What `--methods all` tries for a classifier, in order (cheap ones first: their rows appear soonest).
# The pruned model with int8 on top was the fastest variant within a 1-point budget on an AVX2 CPU.
ALL = ["bf16", "int8-dynamic", "int8-static", "onnx", "onnx-int8", "int8-weight-only", "int4-weight-only",
       "prune-magnitude", "prune-structured", "prune-structured+int8-dynamic", "prune-structured+onnx-int8",
       "distill", "distill+int8-dynamic", "distill+onnx-int8", "share-layers"]
OPTION_FIELDS = ["train_epochs", "train_max_steps", "train_lr", "train_bf16", "distill_layers", "temperature",
                 "soft_weight", "hidden_weight", "prune_heads", "prune_ffn", "sparsity", "share_groups"]
OBJECTIVES = {  # objective -> (row key, True when larger is better)
    "latency": ("latency_ms", False),
    "throughput": ("throughput", True),
    "size": ("size_mb", False),
}


def expand_methods(names: list[str]) -> list[str]:
    """`all` and comma lists expanded; each `A+B` part checked against the known methods."""
    methods: list[str] = []
    for item in names:
        for name in (n.strip() for n in item.split(",")):
            if not name:
                continue
            if name == "all":
                methods += ALL
                continue
            for part in name.split("+"):
                if part not in METHODS:
                    raise DanluError(f"--methods: unknown method {part!r}{did_you_mean(part, list(METHODS))}")
            methods.append(name)
    return list(dict.fromkeys(methods))


def check_classifier(path: Path) -> tuple[dict, list[str]]:
    """The artifact's manifest and labels, or a clear error when it has no classification head."""
    manifest = read_manifest(path)
    config = json.loads((path / "config.json").read_text()) if (path / "config.json").exists() else {}
    architectures = config.get("architectures") or []
    if manifest.get("task") not in (None, "classify"):
        raise DanluError(f"{path} is a {manifest['task']!r} artifact; danlu compress takes classifiers and decoders")
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise DanluError(f"{path} has no task head (architectures: {', '.join(architectures) or 'none'}); "
                         "fine-tune it first: danlu finetune --model ... --data ... --out ...")
    labels = manifest.get("labels") or [config["id2label"][str(i)] for i in range(len(config.get("id2label", {})))]
    return manifest, labels


def compress(args: CompressArgs) -> dict:
    """Run the search; write OUT/variants/*, OUT/results.json, OUT/report.md|html; return the results."""
    from danlu.compress.decoder import compress_decoder, is_decoder
    from danlu.data.classification import load_classification

    parent = resolve_model(args.artifact)
    methods = expand_methods(args.methods)
    if is_decoder(parent):
        return compress_decoder(args, parent)
    manifest, labels = check_classifier(parent)
    if not args.eval_data:
        raise DanluError("--eval-data is required for a classifier (the data to measure accuracy on)")
    saved = manifest.get("args", {})
    data = load_classification(args.eval_data, saved.get("text_column", "text"), saved.get("label_column", "label"),
                               saved.get("seed", 42), saved.get("val_ratio", 0.1), saved.get("test_ratio", 0.1))
    if sorted(data.labels) != sorted(labels):
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
    results = {"artifact": str(parent), "eval_data": args.eval_data, "objective": args.objective,
               "max_accuracy_drop": args.max_accuracy_drop, "methods": methods, "test_examples": len(test),
               "load_average_1min": os.getloadavg()[0], "rows": [], "chosen": None}
    print(f"measuring the original on {len(test)} test texts ...", file=sys.stderr)
    try:
        original = _measure(parent, test, out / "logs" / "original", measure_args)
    except RuntimeError as e:
        raise DanluError(f"cannot measure the original {parent}: {e}") from None
    results["rows"].append({"variant": "original", "method": "original", "status": "ok", "path": str(parent),
                            **original})
    made: dict[str, Path | BaseException] = {"": parent}  # variant key -> its folder, or the error it raised
    for name in methods:
        row = _run_method(name, made, data, labels, saved, args, out, test, measure_args)
        results["rows"].append(row)
        _finish(results, args, out)
        print(f"{name}: {row['status']}" + (f" ({row['reason']})" if row.get("reason") else ""), file=sys.stderr)
    results = _finish(results, args, out)
    from danlu.compress.report import format_table

    print(format_table(results))
    print(results["verdict"])
    print(f"report: {out / 'report.md'}")
    return results


def _measure(folder: Path, test, work: Path, measure_args: dict) -> dict:
    from danlu.compress.measure import measure_in_subprocess

    return measure_in_subprocess(folder, test.texts, test.labels, work, **measure_args)


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


def _run_method(name: str, made: dict[str, Path], data, labels, saved, args: CompressArgs, out: Path, test,
                measure_args: dict) -> dict:
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
            job = CompressJob(parent=made["+".join(parts[:i])], out=out / "variants" / key, data=data, labels=labels,
                              max_length=int(saved.get("max_length", 128)),
                              calibration_samples=args.calibration_samples, seed=args.seed, threads=args.threads,
                              options=options)
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
        row.update(_measure(folder, test, out / "logs" / name, measure_args))
        row["status"] = "ok"
        update_metrics(folder, {"compress": {k: v for k, v in row.items() if k not in ("path",)},
                                "test": {"accuracy": row["accuracy"], "macro_f1": row["macro_f1"]}})
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
        row["accuracy_drop"] = round(100 * (base["accuracy"] - row["accuracy"]), 4)
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
