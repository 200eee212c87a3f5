"""An ONNX Runtime session that looks like a `transformers` model to danlu's task code: called with
input tensors it returns an object whose attributes are the graph's outputs (`logits`, or
`start_logits`/`end_logits`); it has `.config` and `.device`."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch


class OnnxModel:
    def __init__(self, folder: str | Path, threads: int = 0):
        import onnxruntime as ort
        from transformers import AutoConfig

        folder = Path(folder)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.config = AutoConfig.from_pretrained(str(folder))
        self.device = torch.device("cpu")

    def __call__(self, **batch: torch.Tensor) -> SimpleNamespace:
        feed = {name: batch[name].cpu().numpy() for name in self.input_names if name in batch}
        if "token_type_ids" in self.input_names and "token_type_ids" not in feed:
            feed["token_type_ids"] = torch.zeros_like(batch["input_ids"]).numpy()
        outputs = self.session.run(self.output_names, feed)
        return SimpleNamespace(**{n: torch.from_numpy(o) for n, o in zip(self.output_names, outputs)})

    def eval(self) -> "OnnxModel":
        return self

    def train(self, mode: bool = True) -> "OnnxModel":
        return self

    def to(self, *_args, **_kwargs) -> "OnnxModel":
        return self  # onnxruntime's CPU provider: the session stays where it is

    def parameters(self):
        return iter(())
