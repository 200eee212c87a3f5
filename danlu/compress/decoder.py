"""Decoder (causal LM) variants: bf16 and torchao weight-only int8/int4, perplexity and generation speed."""

from __future__ import annotations

import json
from pathlib import Path


def is_decoder(path: Path) -> bool:
    """True for a causal language model folder (config architectures *ForCausalLM)."""
    config = json.loads((path / "config.json").read_text()) if (path / "config.json").exists() else {}
    return any(a.endswith("ForCausalLM") for a in config.get("architectures") or [])


def compress_decoder(args, parent: Path) -> dict:
    raise NotImplementedError("decoder compression is being written")
