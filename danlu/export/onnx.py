"""`danlu export --format onnx`: torch.onnx export, ONNX Runtime graph optimisation, int8, parity check.

The graph is exported with eager attention: ONNX Runtime's BERT fusions (Attention,
SkipLayerNormalization, BiasGelu, EmbedLayerNormalization) only recognise the eager pattern, not SDPA
(shared/MACHINE-NOTES.md). The result is a danlu artifact (model.onnx + config + tokenizer + danlu.json)
that `danlu evaluate`/`predict`/`serve` run on onnxruntime through `danlu.runtime` (`OnnxModel`). The
graph's outputs are the task's (`ONNX_OUTPUTS`: logits, or start/end logits for QA).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Iterable

import torch

from danlu.errors import DanluError

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class _Outputs(torch.nn.Module):
    """Named inputs in, the task's outputs out: the signature the exported graph gets."""

    def __init__(self, model: torch.nn.Module, names: list[str], outputs: tuple[str, ...]):
        super().__init__()
        self.model, self.names, self.outputs = model, names, outputs

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        result = self.model(**dict(zip(self.names, tensors)))
        return tuple(getattr(result, name) for name in self.outputs)


def export_graph(model: torch.nn.Module, tokenizer, path: Path, opset: int = 17,
                 outputs: tuple[str, ...] = ("logits",)) -> list[str]:
    """Write `model` (fp32, eager attention) to `path` with dynamic batch and sequence axes."""
    sample = tokenizer(["a first example sentence", "and a second, somewhat longer example sentence"],
                       padding=True, return_tensors="pt")
    names = [n for n in INPUTS if n in sample]
    per_token = model(**{n: sample[n] for n in names})  # which outputs have a sequence axis
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    for name in outputs:
        axes[name] = {0: "batch", 1: "sequence"} if getattr(per_token, name).dim() >= 2 and \
            getattr(per_token, name).shape[1] == sample["input_ids"].shape[1] else {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's tracer warnings are expected here
        # The TorchScript exporter (dynamo=False) gives the graph ONNX Runtime's BERT fusions match.
        torch.onnx.export(_Outputs(model.eval(), names, outputs), tuple(sample[n] for n in names), str(path),
                          input_names=names, output_names=list(outputs), dynamic_axes=axes,
                          opset_version=opset, dynamo=False)
    return names


def optimize_graph(src: Path, dst: Path, level: int, model_type: str = "bert", num_heads: int = 0,
                   hidden_size: int = 0) -> dict[str, int]:
    """Transformer fusions (python) + ONNX Runtime's own optimiser at `level`; returns fused op counts.

    `num_heads`/`hidden_size` 0 leave them to detection, which fails on our graphs (the head count is
    a -1 in the reshape): attention is then not fused, the other fusions still are."""
    from onnxruntime.transformers import optimizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimized = optimizer.optimize_model(str(src), model_type=model_type, num_heads=num_heads,
                                             hidden_size=hidden_size, opt_level=level, use_gpu=False)
    optimized.save_model_to_file(str(dst))
    return {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}


def quantize_dynamic_graph(src: Path, dst: Path) -> None:
    """Dynamic int8 (weights int8 offline, activations quantized per batch) on the fused graph."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Without DefaultTensorType the quantizer fails on the fused graph's outputs of unknown type.
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def quantize_static_graph(src: Path, dst: Path, batches: Iterable[dict[str, torch.Tensor]]) -> None:
    """Static int8 in QDQ format: activation ranges calibrated on `batches` (MinMax), weights per channel."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{k: v.numpy() for k, v in b.items()} for b in batches])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["MatMul", "Gather"],  # Gather: the embedding tables
                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "ActivationSymmetric": False})


def write_onnx_variant(parent: Path, folder: Path, optimize: int, quantize: str, opset: int = 17,
                       calibration: list[dict[str, torch.Tensor]] | None = None,
                       outputs: tuple[str, ...] | None = None) -> dict:
    """Export `parent` into `folder` (model.onnx, config, tokenizer); returns what was done.

    `outputs` default to those of the parent's task (its ONNX_OUTPUTS)."""
    from transformers import AutoTokenizer

    from danlu.compress.job import NotApplicable
    from danlu.runtime import task_of
    from danlu.runtime.variants import load_variant_model
    from danlu.tasks import get_task

    model = load_variant_model(parent, attn="eager")
    if any(p.dtype != torch.float32 for p in model.parameters()) or not any(True for _ in model.parameters()):
        model = model.float()
    if any("quantized" in type(m).__module__ for m in model.modules()):
        raise NotApplicable("the parent holds PyTorch-quantized modules, which ONNX export does not take")
    tokenizer = AutoTokenizer.from_pretrained(str(parent))
    work = Path(folder).resolve() / ".work"
    work.mkdir(parents=True, exist_ok=True)
    raw = work / "raw.onnx"
    outputs = outputs or get_task(task_of(parent)).ONNX_OUTPUTS
    inputs = export_graph(model, tokenizer, raw, opset, outputs)
    info: dict = {"inputs": inputs, "outputs": list(outputs), "opset": opset, "optimize": optimize,
                  "quantize": quantize}
    with _working_directory(work):  # ONNX Runtime's shape inference drops temp files into the cwd
        current = _optimize_and_quantize(model, raw, work, optimize, quantize, calibration, info)
    shutil.move(str(current), folder / "model.onnx")
    shutil.rmtree(work)
    config = model.config
    config._attn_implementation = "eager"
    config.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return info


@contextlib.contextmanager
def _working_directory(path: Path):
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _optimize_and_quantize(model, raw: Path, work: Path, optimize: int, quantize: str,
                           calibration: list[dict[str, torch.Tensor]] | None, info: dict) -> Path:
    """The graph after ONNX Runtime's fusions and quantization, as asked; returns its path in `work`."""
    from danlu.compress.job import NotApplicable

    current = raw
    if quantize == "int8-static":
        # Calibrate on the plain graph (ONNX shape inference knows its types, not those of the fused
        # com.microsoft ops); ONNX Runtime folds the QDQ pairs into int8 MatMuls when it loads the graph.
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(raw), str(work / "prepared.onnx"), skip_symbolic_shape=True)
        current, optimize = work / "prepared.onnx", 0
        info["optimize"] = "at load (ONNX Runtime session)"
    if optimize:
        fused = work / "fused.onnx"
        model_type = "bert" if model.config.model_type in ("bert", "roberta", "distilbert", "xlm-roberta") else None
        if model_type is None:
            raise NotApplicable(f"no ONNX Runtime fusions for model type {model.config.model_type!r}")
        config = model.config
        pruned = any(m.out_features != config.hidden_size for n, m in model.named_modules()
                     if n.endswith("attention.self.query"))
        # A pruned model has per-layer head counts the fusion cannot take: leave attention unfused there.
        heads, hidden = (0, 0) if pruned else (config.num_attention_heads, config.hidden_size)
        info["fused_operators"] = optimize_graph(current, fused, optimize, model_type, heads, hidden)
        current = fused
    if quantize == "int8":
        quantize_dynamic_graph(current, work / "int8.onnx")
        current = work / "int8.onnx"
    elif quantize == "int8-static":
        quantize_static_graph(current, work / "int8-static.onnx", calibration or [])
        current = work / "int8-static.onnx"
    return current


def parity_check(parent: Path, onnx_folder: Path, task, examples: list, labels: list[str], max_length: int,
                 options: dict | None = None) -> dict:
    """PyTorch (fp32) against the ONNX graph on `examples`: the largest |difference| of any output, and the
    share of inputs whose decoded prediction (the task's `decision`: label, entity spans, answer span) agrees."""
    from transformers import AutoTokenizer

    from danlu.compress.training import MODEL_INPUTS
    from danlu.runtime.onnx_model import OnnxModel
    from danlu.runtime.variants import load_variant_model

    options = options or {}
    model = load_variant_model(parent, attn="eager").float().eval()
    session = OnnxModel(onnx_folder)
    tokenizer = AutoTokenizer.from_pretrained(str(parent))
    objective, lengths = task.make_objective(tokenizer, examples, labels, max_length, **options)
    max_diff = 0.0
    with torch.inference_mode():
        for start in range(0, len(lengths), 32):
            batch = {k: v for k, v in objective.collate(list(range(start, min(start + 32, len(lengths))))).items()
                     if k in MODEL_INPUTS}
            reference, got = model(**batch), session(**batch)
            for name in task.ONNX_OUTPUTS:
                diff = (getattr(reference, name).float() - getattr(got, name).float()).abs().max()
                max_diff = max(max_diff, float(diff))
        inputs = [task.input_of(e) for e in examples]
        expected = task.predict(model, tokenizer, inputs, labels, max_length, **options)
        actual = task.predict(session, tokenizer, inputs, labels, max_length, **options)
    agree = sum(task.decision(a) == task.decision(b) for a, b in zip(expected, actual))
    return {"max_abs_output_diff": max_diff, "prediction_agreement": agree / max(len(examples), 1),
            "examples": len(examples)}


def export_command(args) -> dict:
    """Library function of `danlu export`: write the ONNX artifact and print the parity check."""
    if args.format == "gguf":
        from danlu.export.gguf import export_gguf

        return export_gguf(args.artifact, args.out, "q8_0" if args.quantize == "none" else args.quantize)
    from danlu.artifact import Manifest, atomic_dir, update_metrics, write_manifest
    from danlu.assets import resolve_model
    from danlu.compress.job import NotApplicable
    from danlu.runtime import is_decoder, task_of
    from danlu.tasks import TASKS, get_task, task_options

    parent = resolve_model(args.artifact)
    if (parent / "model.onnx").exists():
        raise DanluError(f"{parent} is already an ONNX artifact")
    task_name = task_of(parent)
    if is_decoder(parent) or task_name not in TASKS:
        raise DanluError(f"{parent} is a {task_name!r} model; `danlu export --format onnx` takes fine-tuned encoder "
                         f"task models ({', '.join(TASKS)})")
    task = get_task(task_name)
    manifest = Manifest.read(parent)
    options = task_options(task, manifest.args)
    labels, max_length = manifest.labels or [], int(manifest.args.get("max_length") or 128)
    examples = _parity_examples(args, task, manifest)
    if args.parity_samples:
        examples = examples[: args.parity_samples]
    out = Path(args.out)
    quantize = "int8" if args.quantize == "int8" else "none"
    with atomic_dir(out, args.overwrite) as tmp:
        try:
            info = write_onnx_variant(parent, tmp, args.optimize, quantize, args.opset, outputs=task.ONNX_OUTPUTS)
        except NotApplicable as e:
            raise DanluError(f"cannot export {parent}: {e}") from None
        write_manifest(tmp, task=task.NAME, stage="export", args={**manifest.args,
                       "export": {"format": "onnx", "optimize": args.optimize, "quantize": args.quantize}},
                       parent=str(parent), labels=labels, data_fingerprint=manifest.data_fingerprint,
                       data=manifest.data, method="onnx" + ("-int8" if quantize == "int8" else ""),
                       onnx=info, primary_metric=task.PRIMARY_METRIC, base_model=manifest.base_model or str(parent))
    parity = parity_check(parent, out, task, examples, labels, max_length, options)
    update_metrics(out, {"parity": parity})
    print(f"wrote {out / 'model.onnx'} ({(out / 'model.onnx').stat().st_size / 1e6:.1f} MB)"
          + (f"; fused: {json.dumps(info['fused_operators'])}" if info.get("fused_operators") else ""))
    print(f"parity vs PyTorch on {parity['examples']} examples: max |output diff| {parity['max_abs_output_diff']:.2e}, "
          f"prediction agreement {parity['prediction_agreement']:.4f}")
    return parity


def _parity_examples(args, task, manifest) -> list:
    from danlu.tasks.base import DataSpec

    source = args.eval_data or manifest.data_source
    if not source:
        raise DanluError("give --eval-data: the artifact does not record its fine-tuning data")
    data = task.load_data(DataSpec.from_args(source, manifest.args))
    return list(data.splits["test"]) or list(data.splits["train"])
