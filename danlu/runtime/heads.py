"""Which transformers head a folder holds, and the task that head serves by default.

This is knowledge about `transformers` model classes, not about danlu's tasks: the task layer
(danlu/tasks) sits above and names its own head (`HEAD`) among these.
"""

from __future__ import annotations

import json
from pathlib import Path

# architecture suffix -> (transformers auto class, peft auto class, the default task of that head)
HEADS: dict[str, tuple[str, str, str]] = {
    "ForSequenceClassification": ("AutoModelForSequenceClassification", "AutoPeftModelForSequenceClassification",
                                  "classify"),
    "ForTokenClassification": ("AutoModelForTokenClassification", "AutoPeftModelForTokenClassification", "ner"),
    "ForQuestionAnswering": ("AutoModelForQuestionAnswering", "AutoPeftModelForQuestionAnswering", "qa"),
    "ForCausalLM": ("AutoModelForCausalLM", "AutoPeftModelForCausalLM", "causal-lm"),
    "LMHeadModel": ("AutoModelForCausalLM", "AutoPeftModelForCausalLM", "causal-lm"),  # GPT-2
    "ForMaskedLM": ("AutoModelForMaskedLM", "", "mlm"),
    "ForPreTraining": ("AutoModelForPreTraining", "", "mlm"),
}
PEFT_TASK_TYPES = {"SEQ_CLS": "ForSequenceClassification", "TOKEN_CLS": "ForTokenClassification",
                   "QUESTION_ANS": "ForQuestionAnswering", "CAUSAL_LM": "ForCausalLM"}
DECODER_TASKS = {"causal-lm", "clm", "sft", "pretrain", "generate"}  # older artifacts wrote clm/pretrain/generate


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def head_suffix(path: Path) -> str | None:
    """The head of a model folder (a key of HEADS), from config.json's architectures or, for a LoRA
    artifact, the adapter's task type; None for a bare encoder (AutoModel)."""
    for arch in read_json(path / "config.json").get("architectures") or []:
        for suffix in HEADS:
            if arch.endswith(suffix):
                return suffix
    task_type = read_json(path / "adapter_config.json").get("task_type")
    return PEFT_TASK_TYPES.get(task_type) if task_type else None


def auto_class(path: Path, peft: bool = False):
    """The transformers (or peft) auto class that loads `path` with its head."""
    import importlib

    suffix = head_suffix(path)
    if suffix is None:
        from transformers import AutoModel

        return AutoModel
    name = HEADS[suffix][1 if peft else 0]
    return getattr(importlib.import_module("peft" if peft else "transformers"), name)
