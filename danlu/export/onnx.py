"""`danlu export --format onnx`: torch.onnx export, ONNX Runtime graph optimisation, int8, parity check.

The graph is exported with eager attention: ONNX Runtime's BERT fusions (Attention,
SkipLayerNormalization, BiasGelu, EmbedLayerNormalization) only recognise the eager pattern, not SDPA
(shared/MACHINE-NOTES.md). The result is a danlu artifact (model.onnx + config + tokenizer + danlu.json)
that `danlu evaluate`/`predict` run on onnxruntime through `OnnxClassifier`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable

import torch

from danlu.errors import DanluError

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class _Logits(torch.nn.Module):
    """Named inputs in, logits out: the signature the exported graph gets."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors))).logits


def export_graph(model: torch.nn.Module, tokenizer, path: Path, opset: int = 17) -> list[str]:
    """Write `model` (fp32, eager attention) to `path` with dynamic batch and sequence axes."""
    sample = tokenizer(["a first example sentence", "and a second, somewhat longer example sentence"],
                       padding=True, return_tensors="pt")
    names = [n for n in INPUTS if n in sample]
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's tracer warnings are expected here
        # The TorchScript exporter (dynamo=False) gives the graph ONNX Runtime's BERT fusions match.
        torch.onnx.export(_Logits(model.eval(), names), tuple(sample[n] for n in names), str(path),
                          input_names=names, output_names=["logits"], dynamic_axes=axes,
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


class OnnxClassifier:
    """An ONNX Runtime session that looks like a `transformers` classifier to danlu's code:
    called with input tensors it returns an object with `.logits`; it has `.config` and `.device`."""

    def __init__(self, folder: str | Path, threads: int = 0):
        import onnxruntime as ort
        from transformers import AutoConfig

        folder = Path(folder)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.config = AutoConfig.from_pretrained(str(folder))
        self.device = torch.device("cpu")

    def __call__(self, **batch: torch.Tensor) -> SimpleNamespace:
        feed = {name: batch[name].cpu().numpy() for name in self.input_names if name in batch}
        if "token_type_ids" in self.input_names and "token_type_ids" not in feed:
            feed["token_type_ids"] = torch.zeros_like(batch["input_ids"]).numpy()
        return SimpleNamespace(logits=torch.from_numpy(self.session.run(["logits"], feed)[0]))

    def eval(self) -> "OnnxClassifier":
        return self

    def to(self, *_args, **_kwargs) -> "OnnxClassifier":
        return self  # onnxruntime's CPU provider: the session stays where it is

    def parameters(self):
        return iter(())


def write_onnx_variant(parent: Path, folder: Path, optimize: int, quantize: str, opset: int = 17,
                       calibration: list[dict[str, torch.Tensor]] | None = None) -> dict:
    """Export `parent` into `folder` (model.onnx, config, tokenizer); returns what was done."""
    from transformers import AutoTokenizer

    from danlu.compress.job import NotApplicable
    from danlu.compress.variant import load_variant_model

    model = load_variant_model(parent, attn="eager")
    if any(p.dtype != torch.float32 for p in model.parameters()) or not any(True for _ in model.parameters()):
        model = model.float()
    if any("quantized" in type(m).__module__ for m in model.modules()):
        raise NotApplicable("the parent holds PyTorch-quantized modules, which ONNX export does not take")
    tokenizer = AutoTokenizer.from_pretrained(str(parent))
    work = Path(folder).resolve() / ".work"
    work.mkdir(parents=True, exist_ok=True)
    raw = work / "raw.onnx"
    inputs = export_graph(model, tokenizer, raw, opset)
    info: dict = {"inputs": inputs, "opset": opset, "optimize": optimize, "quantize": quantize}
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


def parity_check(parent: Path, onnx_folder: Path, texts: list[str], max_length: int) -> dict:
    """Max |logit difference| between PyTorch (fp32) and the ONNX graph, and label agreement."""
    from transformers import AutoTokenizer

    from danlu.compress.variant import load_variant_model
    from danlu.evaluate.classify import encode, pad

    model = load_variant_model(parent, attn="eager").float().eval()
    session = OnnxClassifier(onnx_folder)
    tokenizer = AutoTokenizer.from_pretrained(str(parent))
    features = encode(tokenizer, texts, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    max_diff, agree = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(features), 32):
            batch = pad(features[start:start + 32], pad_id)
            reference = model(**batch).logits.float()
            got = session(**batch).logits.float()
            max_diff = max(max_diff, float((reference - got).abs().max()))
            agree += int((reference.argmax(-1) == got.argmax(-1)).sum())
    return {"max_abs_logit_diff": max_diff, "label_agreement": agree / max(len(features), 1),
            "examples": len(features)}


def export_command(args) -> dict:
    """Library function of `danlu export`: write the ONNX artifact and print the parity check."""
    if args.format == "gguf":
        from danlu.export.gguf import export_gguf

        return export_gguf(args.artifact, args.out, "q8_0" if args.quantize == "none" else args.quantize)
    from danlu.artifact import atomic_dir, read_manifest, resolve_model, update_metrics, write_manifest
    from danlu.compress.job import NotApplicable
    from danlu.evaluate.classify import load_classifier

    parent = resolve_model(args.artifact)
    clf = load_classifier(str(parent), device="cpu")  # also rejects non-classifiers with a clear error
    if (parent / "model.onnx").exists():
        raise DanluError(f"{parent} is already an ONNX artifact")
    manifest = read_manifest(parent)
    texts = _parity_texts(args, manifest)
    if args.parity_samples:
        texts = texts[: args.parity_samples]
    out = Path(args.out)
    quantize = "int8" if args.quantize == "int8" else "none"
    with atomic_dir(out) as tmp:
        try:
            info = write_onnx_variant(parent, tmp, args.optimize, quantize, args.opset)
        except NotApplicable as e:
            raise DanluError(f"cannot export {parent}: {e}") from None
        write_manifest(tmp, task="classify", stage="export", args={**manifest.get("args", {}),
                       "export": {"format": "onnx", "optimize": args.optimize, "quantize": args.quantize}},
                       parent=str(parent), labels=clf.labels, data_fingerprint=manifest.get("data_fingerprint"),
                       data=manifest.get("data"), method="onnx" + ("-int8" if quantize == "int8" else ""),
                       onnx=info, base_model=manifest.get("base_model", str(parent)))
    parity = parity_check(parent, out, texts, clf.max_length)
    update_metrics(out, {"parity": parity})
    print(f"wrote {out / 'model.onnx'} ({(out / 'model.onnx').stat().st_size / 1e6:.1f} MB)"
          + (f"; fused: {json.dumps(info['fused_operators'])}" if info.get("fused_operators") else ""))
    print(f"parity vs PyTorch on {parity['examples']} texts: max |logit diff| {parity['max_abs_logit_diff']:.2e}, "
          f"label agreement {parity['label_agreement']:.4f}")
    return parity


def _parity_texts(args, manifest: dict) -> list[str]:
    from danlu.data.classification import load_classification

    source = args.eval_data or (manifest.get("data") or {}).get("source")
    if not source:
        raise DanluError("give --eval-data: the artifact does not record its fine-tuning data")
    saved = manifest.get("args", {})
    data = load_classification(source, saved.get("text_column", "text"), saved.get("label_column", "label"),
                               saved.get("seed", 42), saved.get("val_ratio", 0.1), saved.get("test_ratio", 0.1))
    return data.splits["test"].texts or data.splits["train"].texts
