"""`danlu export ART --format gguf`: a Llama-architecture decoder as one GGUF file for llama.cpp.

Written with the `gguf` package (llama.cpp's own writer, tensor-name map and quantizers), following
llama.cpp's convert_hf_to_gguf.py for `LlamaForCausalLM`: the same metadata keys, the rotary Q/K
weights permuted from Hugging Face's half-split layout to llama.cpp's interleaved one, and the
byte-level BPE tokenizer as `tokenizer.ggml.*` (tokens, token types, merges, special ids, chat
template). The round trip is checked by loading the file back with transformers (which undoes the
permutation and de-quantises) and comparing logits with the source model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from danlu.errors import DanluError

QUANTS = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0"}
FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0"}
GGUF_NAME = "model.gguf"


def permute_rotary(weight: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotary layout (each head's first half, then second half) -> GGML's interleaved pairs
    (convert_hf_to_gguf.py LlamaModel.permute)."""
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _pre_tokenizer_name(model_dir: Path, spec: dict) -> str:
    """llama.cpp's name for the pre-tokenizer (it picks its split regex by name). A model converted from
    a GGUF (the packaged SmolLM2) keeps its source's name, found by following danlu.json's lineage;
    transformers' GGUF conversion drops SmolLM's digit splitting, so the tokenizer.json cannot tell. GPT-2's
    own split is "gpt-2" in llama.cpp (llama-vocab.cpp), which refuses to load a file that says "gpt2"."""
    import gguf

    from danlu.artifact import read_manifest

    folder: Path | None = model_dir
    for _ in range(8):
        if folder is None or not folder.is_dir():
            break
        manifest = read_manifest(folder)
        source = (manifest.get("args") or {}).get("gguf")
        if source and Path(source).is_file():
            field = gguf.GGUFReader(source).fields.get("tokenizer.ggml.pre")
            if field is not None:
                return str(field.contents())
        parent = manifest.get("base_model") or manifest.get("parent")
        folder = Path(parent) if parent and Path(parent) != folder else None
    return "smollm" if '"individual_digits": true' in json.dumps(spec.get("pre_tokenizer") or {}) else "gpt-2"


def _tokenizer_metadata(writer, tokenizer_dir: Path) -> None:
    """tokenizer.ggml.* for a byte-level BPE tokenizer.json (GPT-2 style, as Llama-3 and SmolLM use)."""
    import gguf

    path = tokenizer_dir / "tokenizer.json"
    if not path.exists():
        raise DanluError(f"{tokenizer_dir}: no tokenizer.json; GGUF export needs a fast BPE tokenizer")
    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise DanluError(f"{path}: a {model.get('type')} tokenizer; GGUF export handles byte-level BPE only")
    vocab = dict(model["vocab"])
    added = {t["content"]: t for t in spec.get("added_tokens", [])}
    for content, token in added.items():
        vocab[content] = token["id"]
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for text, i in vocab.items():
        tokens[i] = text
        special = added.get(text, {}).get("special")
        types[i] = (gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED) if text in added \
            else gguf.TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(tokenizer_dir, spec))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text(encoding="utf-8")) \
        if (tokenizer_dir / "tokenizer_config.json").exists() else {}
    for key, add in (("bos_token", writer.add_bos_token_id), ("eos_token", writer.add_eos_token_id),
                     ("unk_token", writer.add_unk_token_id), ("pad_token", writer.add_pad_token_id)):
        token = config.get(key)
        token = token.get("content") if isinstance(token, dict) else token
        if token in vocab:
            add(vocab[token])
    writer.add_add_bos_token(bool(config.get("add_bos_token", False)))
    writer.add_add_space_prefix(False)
    template = config.get("chat_template")
    if template is None and (tokenizer_dir / "chat_template.jinja").exists():
        template = (tokenizer_dir / "chat_template.jinja").read_text(encoding="utf-8")
    if template:
        writer.add_chat_template(template)


def write_gguf(model_dir: Path, target: Path, quantize: str = "q8_0", name: str = "") -> dict:
    """Write the Llama model in `model_dir` to the GGUF file `target`; return what was written."""
    import gguf
    from safetensors import safe_open

    if quantize not in QUANTS:
        raise DanluError(f"--quantize for gguf must be one of {', '.join(QUANTS)}, got {quantize!r}")
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise DanluError(f"{model_dir} is a {config.get('model_type')!r} model; GGUF export handles Llama "
                         "decoders (LlamaForCausalLM) only")
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise DanluError(f"{model_dir}: no safetensors weights (merge a LoRA artifact first: danlu merge)")
    n_head, n_kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    n_layer, hidden = config["num_hidden_layers"], config["hidden_size"]
    head_dim = config.get("head_dim") or hidden // n_head
    arch = gguf.MODEL_ARCH.LLAMA
    writer = gguf.GGUFWriter(str(target), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or model_dir.name)
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(hidden)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(config.get("rope_theta") or (config.get("rope_parameters") or {}).get(
        "rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[quantize]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _tokenizer_metadata(writer, model_dir)

    names = gguf.TensorNameMap(arch, n_layer)
    counts: dict[str, int] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for hf_name in f.keys():
                if hf_name.endswith("rotary_emb.inv_freq"):
                    continue
                if hf_name == "lm_head.weight" and config.get("tie_word_embeddings"):
                    continue  # llama.cpp reuses token_embd when there is no output tensor
                data = f.get_tensor(hf_name).to(torch.float32).numpy()
                if hf_name.endswith("q_proj.weight"):
                    data = permute_rotary(data, n_head)
                elif hf_name.endswith("k_proj.weight"):
                    data = permute_rotary(data, n_kv)
                gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    raise DanluError(f"{file.name}: no GGUF name for tensor {hf_name}")
                qtype = _tensor_type(quantize, data, gguf_name)
                counts[qtype.name] = counts.get(qtype.name, 0) + 1
                if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                    writer.add_tensor(gguf_name, data.astype(np.float16 if qtype.name == "F16" else np.float32))
                else:
                    writer.add_tensor(gguf_name, gguf.quants.quantize(data, qtype),
                                      raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"quantize": quantize, "tensor_types": counts, "bytes": target.stat().st_size}


def _tensor_type(quantize: str, data: np.ndarray, name: str):
    """The GGML type of one tensor: norms (1-D) stay F32, as llama.cpp's converter keeps them; a
    block-quantized type needs rows that are whole blocks, else F16 (or F32 for F32 files). In a 4-bit
    file the token embeddings and the output matrix stay 8-bit, as in llama.cpp's own 4-bit files (the
    packaged SmolLM2 Q4_1 keeps token_embd at Q8_0): at 4 bits the shared embedding/output matrix of
    SmolLM2 alone cut greedy top-1 agreement with the float model to 0.55."""
    import gguf

    qtype = getattr(gguf.GGMLQuantizationType, QUANTS[quantize])
    if data.ndim < 2:
        return gguf.GGMLQuantizationType.F32
    if quantize == "q4_0" and name in ("token_embd.weight", "output.weight"):
        qtype = gguf.GGMLQuantizationType.Q8_0
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if data.shape[-1] % block:
        return gguf.GGMLQuantizationType.F16
    return qtype


@torch.inference_mode()
def round_trip(model_dir: Path, gguf_path: Path, texts: list[str]) -> dict:
    """Load the GGUF back with transformers and compare its logits with the source model's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                  dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    gguf_tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    worst, agree, total, same_tokens = 0.0, 0, 0, True
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        same_tokens &= gguf_tokenizer(text, return_tensors="pt")["input_ids"].tolist() == ids.tolist()
        a, b = source(input_ids=ids).logits[0], loaded(input_ids=ids).logits[0]
        worst = max(worst, float((a - b).abs().max()))
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += ids.shape[1]
    return {"texts": len(texts), "max_abs_logit_diff": worst, "top1_agreement": agree / max(total, 1),
            "same_tokenization": bool(same_tokens)}


PARITY_TEXTS = ["The capital of France is", "def fibonacci(n):\n    if n < 2:", "Once upon a time, 12 robots",
                "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"]


def export_gguf(artifact: str, out: str, quantize: str = "q8_0", check: bool = True) -> dict:
    """`danlu export ART --out OUT --format gguf [--quantize q8_0|q4_0|f16|f32]`: OUT/model.gguf and
    danlu.json (with the round-trip parity), written atomically."""
    from danlu.artifact import atomic_dir, read_manifest, write_manifest
    from danlu.assets import resolve_model

    parent = resolve_model(artifact)
    if (parent / "adapter_config.json").exists():
        raise DanluError(f"{parent} is a LoRA artifact; merge it first: danlu merge {artifact} --out DIR")
    manifest = read_manifest(parent)
    with atomic_dir(Path(out)) as tmp:
        info = write_gguf(parent, tmp / GGUF_NAME, quantize, name=Path(artifact).name)
        parity = round_trip(parent, tmp / GGUF_NAME, PARITY_TEXTS) if check else {}
        write_manifest(tmp, task=manifest.get("task", "causal-lm"), stage="export", parent=str(parent),
                       args={**manifest.get("args", {}), "export": {"format": "gguf", "quantize": quantize}},
                       gguf=info, metrics={"parity": parity}, base_model=manifest.get("base_model", str(parent)))
    path = Path(out) / GGUF_NAME
    print(f"wrote {path} ({info['bytes'] / 1e6:.1f} MB, {quantize}; tensors: {json.dumps(info['tensor_types'])})")
    if parity:
        print(f"round trip through transformers on {parity['texts']} texts: max |logit diff| "
              f"{parity['max_abs_logit_diff']:.3e}, top-1 agreement {parity['top1_agreement']:.4f}, "
              f"same tokenization: {parity['same_tokenization']}")
    return {"path": str(path), **info, "parity": parity}
