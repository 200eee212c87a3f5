"""Token attributions by integrated gradients on the input embeddings (Captum), attention of every layer
and head from one forward pass, and attention rollout (Abnar & Zuidema, 2020)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from danlu.errors import DanluError


@dataclass
class Explanation:
    """Everything one page shows about one text."""

    text: str
    tokens: list[str]
    attributions: list[float]  # one per token, summed over the embedding dimension
    target: str  # the label the attributions are for
    convergence_delta: float  # |sum(attributions) - (f(x) - f(baseline))|: how far to trust them
    prediction: str
    probabilities: dict[str, float]
    attentions: list  # [layer][head][query][key], rounded
    rollout: list  # [query][key]
    steps: int
    internal_batch_size: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 2 << 30


def choose_internal_batch_size(config, seq_len: int, steps: int, device: torch.device,
                               cpu_cap: int = 16) -> int:
    """How many interpolation steps to run per forward/backward pass: what a quarter of the free memory
    holds (activations kept for the backward pass, ~24 hidden-sized tensors and 3 attention maps per
    layer, float32), capped at `steps`. On a CPU large batches gain nothing once the matmuls are big
    enough, and cost cache misses, hence `cpu_cap` (measured in benchmarks/explain_speed.py)."""
    hidden = getattr(config, "hidden_size", 768)
    layers = getattr(config, "num_hidden_layers", 12)
    heads = getattr(config, "num_attention_heads", 12)
    per_step = 4 * layers * seq_len * (24 * hidden + 3 * heads * seq_len)
    fits = max(1, int(_free_bytes(device) // 4 // max(per_step, 1)))
    cap = steps if device.type == "cuda" else min(steps, cpu_cap)
    return max(1, min(fits, cap))


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def encode_one(tokenizer, text: str, max_length: int) -> dict[str, torch.Tensor]:
    """The batch of one text; a text that tokenizes to nothing but special tokens is refused."""
    enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
    special = set(tokenizer.all_special_ids)
    if not any(int(t) not in special for t in enc["input_ids"][0]):
        raise DanluError(f"the text {text[:60]!r} tokenizes to nothing (no tokens besides special ones)")
    return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def baseline_ids(tokenizer, input_ids: torch.Tensor) -> torch.Tensor:
    """The reference input: every token that is not special replaced by padding (the usual IG baseline
    for text: an 'empty' sentence of the same length, [CLS] and [SEP] kept)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), device=input_ids.device)
    keep = torch.isin(input_ids, special)
    return torch.where(keep, input_ids, torch.full_like(input_ids, pad))


def integrated_gradients(model, tokenizer, batch: dict[str, torch.Tensor], target: int, steps: int = 50,
                         internal_batch_size: int = 0, bf16: bool = False) -> tuple[torch.Tensor, float, int]:
    """Attributions (seq,) of the target class's probability to each token, by Captum's
    LayerIntegratedGradients on the word embeddings; returns them with the convergence delta and the
    internal batch size used. The weights' gradients are turned off for the pass (not needed: only the
    embeddings' gradient is), which spares their memory. `bf16` runs the steps under bfloat16 autocast
    (only where the hardware has it natively; see danlu.hardware.use_bf16)."""
    from danlu.hardware import use_bf16

    try:
        from captum.attr import LayerIntegratedGradients
    except ImportError:
        raise DanluError("danlu explain needs Captum: pip install 'danlu[explain]' (or: pip install captum)") from None
    device = _model_device(model)
    batch = {k: v.to(device) for k, v in batch.items()}
    names = [k for k in ("attention_mask", "token_type_ids") if k in batch]

    def forward(input_ids, *extra):
        out = model(input_ids=input_ids, **dict(zip(names, extra))).logits.float()
        return torch.softmax(out, dim=-1)

    ibs = internal_batch_size or choose_internal_batch_size(model.config, batch["input_ids"].shape[1], steps, device)
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    lig = LayerIntegratedGradients(forward, model.get_input_embeddings())
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(bf16, device_type=device.type))
    try:
        with autocast:
            attributions, delta = lig.attribute(
                batch["input_ids"], baselines=baseline_ids(tokenizer, batch["input_ids"]),
                additional_forward_args=tuple(batch[k] for k in names), target=target, n_steps=steps,
                internal_batch_size=ibs, return_convergence_delta=True)
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    return attributions.sum(dim=-1)[0].detach().float().cpu(), float(delta.abs().max()), ibs


@torch.no_grad()
def attention_and_prediction(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(layers, heads, seq, seq) attention weights and the class probabilities, from one forward pass with
    eager attention (SDPA and flash kernels do not return the weights); the model's own attention
    implementation is restored afterwards."""
    device = _model_device(model)
    batch = {k: v.to(device) for k, v in batch.items()}
    before = getattr(model.config, "_attn_implementation", None)
    switch = before not in (None, "eager") and hasattr(model, "set_attn_implementation")
    if switch:
        model.set_attn_implementation("eager")
    try:
        out = model(**batch, output_attentions=True)
    finally:
        if switch:
            model.set_attn_implementation(before)
    if not out.attentions:
        raise DanluError(f"{type(model).__name__} returned no attention weights")
    attentions = torch.stack([a[0].float() for a in out.attentions]).cpu()  # (layers, heads, seq, seq)
    return attentions, torch.softmax(out.logits[0].float(), dim=-1).cpu()


def attention_rollout(attentions: torch.Tensor) -> torch.Tensor:
    """Attention rollout: per layer the head-averaged attention plus the identity (the residual
    stream), rows renormalised, multiplied from the first layer up. (seq, seq)."""
    seq = attentions.shape[-1]
    rollout = torch.eye(seq)
    for layer in attentions:
        a = 0.5 * layer.mean(dim=0) + 0.5 * torch.eye(seq)
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a @ rollout
    return rollout


def explain_text(model, tokenizer, labels: list[str], text: str, max_length: int, steps: int = 50,
                 target: str = "", internal_batch_size: int = 0, bf16: bool = False) -> Explanation:
    """Prediction, IG attributions for `target` (default: the predicted label), attention and rollout."""
    batch = encode_one(tokenizer, text, max_length)
    attentions, probs = attention_and_prediction(model, batch)
    predicted = int(probs.argmax())
    if target and target not in labels:
        raise DanluError(f"--target {target!r} is not a label of this model; labels: {', '.join(labels)}")
    target_id = labels.index(target) if target else predicted
    attributions, delta, ibs = integrated_gradients(model, tokenizer, batch, target_id, steps, internal_batch_size,
                                                   bf16)
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    return Explanation(
        text=text, tokens=tokens, attributions=[float(f"{float(a):.6g}") for a in attributions],
        target=labels[target_id], convergence_delta=float(f"{delta:.6g}"), prediction=labels[predicted],
        probabilities={label: round(float(p), 6) for label, p in zip(labels, probs)},
        attentions=[[[[round(float(x), 4) for x in row] for row in head] for head in layer] for layer in attentions],
        rollout=[[round(float(x), 4) for x in row] for row in attention_rollout(attentions)],
        steps=steps, internal_batch_size=ibs)
