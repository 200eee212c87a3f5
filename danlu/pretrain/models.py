"""Model builders for pretraining: a Hugging Face config from (arch, size, overrides), or a model
to continue pretraining (--init)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from danlu.errors import DanluError

# (layers, width, heads, feed-forward width): BERT-tiny, BERT-small and BERT-base shapes.
SIZES = {"tiny": (2, 128, 2, 512), "small": (4, 512, 8, 2048), "base": (12, 768, 12, 3072)}


def model_config(arch: str, size: str, vocab_size: int, seq_len: int, special: dict, overrides: dict):
    """The config of a fresh model. Dropout is off: in single-pass pretraining it only slows learning
    (set it with --config if you want it)."""
    from transformers import BertConfig, GPT2Config, LlamaConfig

    layers, width, heads, ffn = SIZES[size]
    if arch == "bert":
        values = dict(vocab_size=vocab_size, hidden_size=width, num_hidden_layers=layers,
                      num_attention_heads=heads, intermediate_size=ffn, max_position_embeddings=max(512, seq_len),
                      type_vocab_size=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                      pad_token_id=special.get("pad") or 0)
        cls = BertConfig
    elif arch == "llama":
        values = dict(vocab_size=vocab_size, hidden_size=width, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads,
                      intermediate_size=ffn * 2 // 3 // 32 * 32,  # SwiGLU has 3 matrices: same parameters
                      max_position_embeddings=max(2048, seq_len), tie_word_embeddings=True,
                      bos_token_id=special.get("bos"), eos_token_id=special.get("eos"),
                      pad_token_id=special.get("pad"))
        cls = LlamaConfig
    elif arch == "gpt2":
        values = dict(vocab_size=vocab_size, n_embd=width, n_layer=layers, n_head=heads, n_inner=ffn,
                      n_positions=max(1024, seq_len), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      bos_token_id=special.get("bos"), eos_token_id=special.get("eos"),
                      pad_token_id=special.get("pad"))
        cls = GPT2Config
    else:
        raise DanluError(f"--arch: unknown architecture {arch!r}")
    return cls(**{**values, **overrides})


def read_overrides(path: str) -> dict:
    """The --config JSON: model config fields that override the size's."""
    if not path:
        return {}
    file = Path(path)
    if not file.exists():
        raise DanluError(f"--config: no such file: {file}")
    try:
        values = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DanluError(f"--config {file}: not valid JSON: {e}") from None
    if not isinstance(values, dict):
        raise DanluError(f"--config {file}: expected a JSON object of config fields")
    return values


def build_model(objective: str, config) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, BertForMaskedLM, BertForPreTraining

    if objective == "mlm":
        return BertForMaskedLM(config)
    if objective == "mlm+nsp":
        return BertForPreTraining(config)
    return AutoModelForCausalLM.from_config(config)


def load_init(objective: str, path: Path) -> torch.nn.Module:
    """The --init model with the head the objective needs (a missing NSP head starts from random)."""
    from transformers import AutoModelForCausalLM, BertForMaskedLM, BertForPreTraining
    from transformers.utils import logging as hf_logging

    cls = {"mlm": BertForMaskedLM, "mlm+nsp": BertForPreTraining, "clm": AutoModelForCausalLM}[objective]
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized" heads are expected here
    try:
        return cls.from_pretrained(str(path))
    finally:
        hf_logging.set_verbosity(verbosity)


def check_tokenizer_matches(model_path: Path, data_tokenizer, model_vocab_size: int) -> None:
    """Refuse --init with data tokenized by another vocabulary (the ids would mean other words)."""
    if len(data_tokenizer) > model_vocab_size:
        raise DanluError(f"--init {model_path}: its vocabulary has {model_vocab_size} tokens but the prepared "
                         f"data uses {len(data_tokenizer)}; prepare the corpus with --tokenizer {model_path}")
    if (model_path / "tokenizer.json").exists() or (model_path / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        if AutoTokenizer.from_pretrained(str(model_path)).get_vocab() != data_tokenizer.get_vocab():
            raise DanluError(f"--init {model_path}: the prepared data was tokenized with another vocabulary; "
                             f"prepare the corpus with --tokenizer {model_path}")


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
