"""Quantization methods for classifiers: bf16, PyTorch dynamic int8, ONNX Runtime (fp32 fused, dynamic
and calibrated static int8). Each is a `Method` (see job.py): it writes one variant artifact.

Weight-only int8/int4 (torchao) targets decoders, whose batch-1 decode is bound by streaming weights;
see danlu/compress/decoder.py. For an encoder classifier it is not applicable here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from danlu.compress.job import CompressJob, NotApplicable
from danlu.compress.variant import int8_state, load_parent, rebuild_int8_dynamic, write_variant


def bf16(job: CompressJob) -> Path:
    """All weights cast to bfloat16 (AMX/tensor cores run it natively; half the bytes)."""
    model, _ = load_parent(job)
    model = model.to(torch.bfloat16)
    return write_variant(job, "bf16", lambda folder: model.save_pretrained(str(folder)),
                         notes="weights and activations in bfloat16 (cast, not autocast)")


def int8_dynamic(job: CompressJob) -> Path:
    """PyTorch dynamic int8: Linear weights int8 per channel, activations quantized per batch at run time.

    Stored as int8 tensors + scales in safetensors (the word embeddings as int8 per row too, de-quantised
    on load), so the file really is about a quarter of fp32."""
    from safetensors.torch import save_file

    model, _ = load_parent(job)
    if any(p.device.type != "cpu" for p in model.parameters()):
        model = model.cpu()
    state = int8_state(model)
    # Check now that the stored tensors rebuild into a working model (a failure here is this method's).
    rebuild_int8_dynamic(type(model)(model.config).eval(), state)

    def save(folder: Path) -> None:
        model.config.save_pretrained(str(folder))
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})

    return write_variant(job, "int8-dynamic", save, load={"format": "int8-dynamic", "cpu_only": True},
                         notes="torch.ao dynamic int8 Linear (oneDNN engine), per-channel weights; word "
                               "embeddings stored int8 per row and de-quantised to fp32 on load")


def onnx_fp32(job: CompressJob) -> Path:
    """ONNX Runtime with the transformer fusions, fp32."""
    return _onnx(job, "onnx", quantize="none")


def onnx_int8(job: CompressJob) -> Path:
    """ONNX Runtime, fused graph, dynamic int8 (MatMul weights int8 per channel)."""
    return _onnx(job, "onnx-int8", quantize="int8")


def int8_static(job: CompressJob) -> Path:
    """ONNX Runtime static int8 in QDQ format, activation ranges calibrated on training texts."""
    from transformers import AutoTokenizer

    from danlu.compress.training import calibration_batches

    tokenizer = AutoTokenizer.from_pretrained(str(job.parent))
    return _onnx(job, "int8-static", quantize="int8-static", calibration=calibration_batches(job, tokenizer))


def _onnx(job: CompressJob, method: str, quantize: str, calibration=None) -> Path:
    from danlu.export.onnx import write_onnx_variant

    if (job.parent / "model.onnx").exists():
        raise NotApplicable("the parent is already an ONNX graph")
    info: dict = {}

    def save(folder: Path) -> None:
        info.update(write_onnx_variant(job.parent, folder, optimize=job.options.get("onnx_optimize", 99),
                                       quantize=quantize, calibration=calibration))

    notes = {"onnx": "ONNX Runtime, fused graph, fp32",
             "onnx-int8": "ONNX Runtime, fused graph, dynamic int8 MatMul weights",
             "int8-static": "ONNX Runtime QDQ static int8 (MinMax calibration on training texts)"}[method]
    return write_variant(job, method, save, notes=notes, info=info)


def weight_only(job: CompressJob) -> Path:
    """torchao weight-only int8/int4: for decoders (see danlu/compress/decoder.py)."""
    raise NotApplicable("weight-only quantization pays off in memory-bound decoding; for an encoder "
                        "classifier use int8-dynamic / int8-static (compute-bound batches)")
