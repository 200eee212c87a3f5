"""Convert a GGUF checkpoint once into a plain safetensors model folder.

`transformers` de-quantises a GGUF file to float on load, but then refuses `save_pretrained`
("quantized with gguf"). So we build a fresh model from the config without its
`quantization_config`, load the de-quantised state dict into it, and save that. The result loads
in well under a second, where the GGUF path takes ~20 s.
"""

from __future__ import annotations

import sys
from pathlib import Path

from danlu.artifact import atomic_dir, write_manifest


def cached_dir(target: Path) -> Path | None:
    """The converted folder if a complete conversion is there."""
    return target if (target / "danlu.json").exists() else None


def converted_dir(gguf_path: Path, target: Path, quiet: bool = False) -> Path:
    """Return `target`, converting `gguf_path` into it first if that was not done before."""
    if cached_dir(target):
        return target
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not quiet:
        print(f"converting {gguf_path.name} to safetensors in {target} (once) ...", file=sys.stderr)
    folder, name = str(gguf_path.parent), gguf_path.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_manifest(tmp, task="causal-lm", stage="convert-gguf", args={"gguf": str(gguf_path)},
                       parent=str(gguf_path))
    return target
