"""Token attributions by integrated gradients on the input embeddings (Captum), attention of every layer
and head from one forward pass, and attention rollout (Abnar & Zuidema, 2020)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

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
    task: str = "classify"
    # every attributed output, the first being the one above: {"name", "label", "attributions" (None for a
    # token that is not part of that output's input), "convergence_delta", "position" (the token the output
    # sits at, -1 for none), "probabilities"}; a classifier has one, a token classifier one per entity, a QA
    # model the answer's start and end, a decoder one per generated token
    targets: list = field(default_factory=list)

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


def integrated_gradients(model, tokenizer, batch: dict[str, torch.Tensor], target: int | Callable, steps: int = 50,
                         internal_batch_size: int = 0, bf16: bool = False, forward_kwargs: dict | None = None
                         ) -> tuple[torch.Tensor, float, int]:
    """Attributions (seq,) of one number the model computes to each token, by Captum's
    LayerIntegratedGradients on the word embeddings; returns them with the convergence delta and the
    internal batch size used. The number is the probability of class `target` (an int), or `target(outputs)`
    -> (batch,) for a callable (a token's label, an answer's start, a next token). `forward_kwargs` go to every
    forward call (a decoder's `logits_to_keep=1`). The weights' gradients are turned off for the pass (not
    needed: only the embeddings' gradient is), which spares their memory. `bf16` runs the steps under
    bfloat16 autocast (only where the hardware has it natively; see danlu.hardware.use_bf16)."""
    from danlu.hardware import use_bf16

    try:
        from captum.attr import LayerIntegratedGradients
    except ImportError:
        raise DanluError("danlu explain needs Captum: pip install 'danlu[explain]' (or: pip install captum)") from None
    device = _model_device(model)
    batch = {k: v.to(device) for k, v in batch.items()}
    names = [k for k in ("attention_mask", "token_type_ids") if k in batch]
    score = target if callable(target) else (lambda out: torch.softmax(out.logits.float(), dim=-1)[:, target])
    options = forward_kwargs or {}

    def forward(input_ids, *extra):
        return score(model(input_ids=input_ids, **dict(zip(names, extra)), **options))

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
                additional_forward_args=tuple(batch[k] for k in names), n_steps=steps,
                internal_batch_size=ibs, return_convergence_delta=True)
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    return attributions.sum(dim=-1)[0].detach().float().cpu(), float(delta.abs().max()), ibs


@torch.no_grad()
def attention_and_outputs(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, object]:
    """(layers, heads, seq, seq) attention weights and the model's outputs, from one forward pass with
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
    return torch.stack([a[0].float() for a in out.attentions]).cpu(), out  # (layers, heads, seq, seq)


def attention_and_prediction(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A classifier's attention weights (layers, heads, seq, seq) and class probabilities, from one pass."""
    attentions, out = attention_and_outputs(model, batch)
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


@dataclass
class Target:
    """One number of the model's output to attribute: `score` is a class index (its probability) or
    outputs -> (batch,); `batch` is the input it is computed from (a decoder's prefix before the token),
    `position` the page token it belongs to (-1: the whole text), `probabilities` what the page shows beside it."""

    name: str  # what the page's selector says: "PER: John", "answer start: 'paris'", "token 2: ' the'"
    label: str  # what the attributions are for
    score: int | Callable
    batch: dict[str, torch.Tensor]
    position: int = -1
    probabilities: dict[str, float] = field(default_factory=dict)
    forward_kwargs: dict = field(default_factory=dict)


@dataclass
class Subject:
    """What a task's explainer (danlu/explain/targets.py) hands over: the input as the page shows it and
    the outputs to attribute."""

    text: str
    batch: dict[str, torch.Tensor]  # the input of the attention view; its tokens are the page's tokens
    tokens: list[str]
    prediction: str
    targets: list[Target]


def _rounded(matrix: torch.Tensor, digits: int = 4) -> list:
    return [[round(float(x), digits) for x in row] for row in matrix]


def explain_subject(model, tokenizer, subject: Subject, task: str, steps: int = 50, internal_batch_size: int = 0,
                    bf16: bool = False) -> Explanation:
    """IG attributions for each of the subject's targets, attention of every layer and head, and rollout."""
    attentions, _ = attention_and_outputs(model, subject.batch)
    targets, used = [], 0
    for t in subject.targets:
        attributions, delta, used = integrated_gradients(model, tokenizer, t.batch, t.score, steps,
                                                         internal_batch_size, bf16, t.forward_kwargs)
        values = [float(f"{float(a):.6g}") for a in attributions]
        targets.append({"name": t.name, "label": t.label,
                        "attributions": values + [None] * (len(subject.tokens) - len(values)),
                        "convergence_delta": float(f"{delta:.6g}"), "position": t.position,
                        "probabilities": t.probabilities})
    first = targets[0]
    return Explanation(
        text=subject.text, tokens=subject.tokens, attributions=first["attributions"], target=first["label"],
        convergence_delta=first["convergence_delta"], prediction=subject.prediction,
        probabilities=first["probabilities"], attentions=[[_rounded(head) for head in layer] for layer in attentions],
        rollout=_rounded(attention_rollout(attentions)), steps=steps, internal_batch_size=used, task=task,
        targets=targets)
