"""Pruning: structured (whole attention heads and FFN neurons, so the matrices really shrink) with a short
recovery fine-tune, and unstructured magnitude pruning (zeros in dense matrices: no speedup, said so).

Head and neuron importance is the first-order Taylor estimate |w * dL/dw| summed over each head's
(or neuron's) weights, accumulated over calibration examples (Molchanov et al. 2019; Michel et al. 2019
score heads the same way through a head mask). transformers 5 dropped `prune_heads`, so the Linear
layers are cut here by hand; the loader re-shapes them from the checkpoint (variant.py, `resized`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from danlu.compress.job import CompressJob, NotApplicable
from danlu.compress.training import calibration_batches, run_training, task_objective
from danlu.compress.variant import encoder_layers, load_parent, write_variant


def _bert_parts(layer: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The Linear layers structured pruning cuts, for a BERT-style layer."""
    try:
        attention = layer.attention
        parts = {"query": attention.self.query, "key": attention.self.key, "value": attention.self.value,
                 "attn_out": attention.output.dense, "ffn_in": layer.intermediate.dense, "ffn_out": layer.output.dense}
    except AttributeError:
        raise NotApplicable(f"{type(layer).__name__} is not a BERT-style layer (attention.self.query, "
                            "intermediate.dense, output.dense)") from None
    if not all(isinstance(m, torch.nn.Linear) for m in parts.values()):
        raise NotApplicable("the layer's projections are not plain nn.Linear modules")
    return parts


def importance(model: torch.nn.Module, job: CompressJob, tokenizer) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer: (head scores (heads,), neuron scores (intermediate,)) from |w * grad| on calibration data."""
    objective, _ = task_objective(job, tokenizer)  # its loss_sum is the task's loss
    layers = encoder_layers(model)
    parts = [_bert_parts(layer) for layer in layers]
    model.zero_grad(set_to_none=True)
    model.eval()  # no dropout: the same scores for the same data
    for batch in calibration_batches(job, tokenizer, 16, with_targets=True):
        objective.loss_sum(model, batch).backward()
    scores = []
    for layer, p in zip(layers, parts):
        head_size = layer.attention.self.attention_head_size
        taylor = lambda m: (m.weight * m.weight.grad).abs()  # noqa: E731
        per_row = sum(taylor(p[k]).sum(1) for k in ("query", "key", "value")) + taylor(p["attn_out"]).sum(0)
        heads = per_row.view(-1, head_size).sum(1)
        neurons = taylor(p["ffn_in"]).sum(1) + taylor(p["ffn_out"]).sum(0)
        scores.append((heads.detach(), neurons.detach()))
    model.zero_grad(set_to_none=True)
    return scores


def _keep(linear: torch.nn.Linear, index: torch.Tensor, dim: int) -> torch.nn.Linear:
    """A smaller copy of `linear` keeping `index` of its outputs (dim 0) or inputs (dim 1)."""
    weight = linear.weight.detach().index_select(dim, index).clone()
    bias = linear.bias.detach().clone() if linear.bias is not None else None
    if dim == 0 and bias is not None:
        bias = bias.index_select(0, index).clone()
    new = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    new.weight.data.copy_(weight)
    if bias is not None:
        new.bias.data.copy_(bias)
    return new


def prune_layer(layer: torch.nn.Module, keep_heads: list[int], keep_neurons: torch.Tensor) -> None:
    """Cut a BERT layer down to the given heads and FFN neurons, in place."""
    attention = layer.attention.self
    size = attention.attention_head_size
    rows = torch.cat([torch.arange(h * size, (h + 1) * size) for h in sorted(keep_heads)])
    for name in ("query", "key", "value"):
        setattr(attention, name, _keep(getattr(attention, name), rows, 0))
    layer.attention.output.dense = _keep(layer.attention.output.dense, rows, 1)
    attention.num_attention_heads = len(keep_heads)
    attention.all_head_size = len(keep_heads) * size
    keep_neurons = keep_neurons.sort().values
    layer.intermediate.dense = _keep(layer.intermediate.dense, keep_neurons, 0)
    layer.output.dense = _keep(layer.output.dense, keep_neurons, 1)


def prune_structured(job: CompressJob) -> Path:
    """Remove the least important heads and FFN neurons of every layer, then fine-tune briefly to recover."""
    head_share, ffn_share = job.options.get("prune_heads", 0.25), job.options.get("prune_ffn", 0.25)
    model, tokenizer = load_parent(job)
    layers = encoder_layers(model)
    before = sum(p.numel() for p in model.parameters())
    kept = []
    for layer, (heads, neurons) in zip(layers, importance(model, job, tokenizer)):
        n_heads = max(1, round(len(heads) * (1 - head_share)))  # a layer keeps at least one head
        n_neurons = max(1, round(len(neurons) * (1 - ffn_share)))
        keep_heads = heads.topk(n_heads).indices.tolist()
        prune_layer(layer, keep_heads, neurons.topk(n_neurons).indices)
        kept.append({"heads": sorted(keep_heads), "neurons": n_neurons})
    after = sum(p.numel() for p in model.parameters())
    objective, lengths = task_objective(job, tokenizer)
    # Recovery: half the epochs of the other trainings (it starts from a trained model).
    training = run_training(model, objective, lengths, job, "recovery", epochs=job.options.get("train_epochs", 2.0) / 2)
    info = {"parameters_before": before, "parameters_after": after, "kept": kept, "recovery": training}
    return write_variant(job, "prune-structured", lambda folder: model.save_pretrained(str(folder)),
                         load={"resized": True}, info=info,
                         notes=f"{head_share:.0%} of heads and {ffn_share:.0%} of FFN neurons removed per layer "
                               f"({before:,} -> {after:,} parameters), then a recovery fine-tune")


def prune_magnitude(job: CompressJob) -> Path:
    """Zero the smallest-magnitude share of each encoder Linear's weights (unstructured sparsity)."""
    from torch.nn.utils import prune

    sparsity = job.options.get("sparsity", 0.5)
    model, _ = load_parent(job)
    layers = encoder_layers(model)
    targets = [m for layer in layers for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    for module in targets:
        prune.l1_unstructured(module, "weight", amount=sparsity)
        prune.remove(module, "weight")  # make the zeros permanent: a plain dense weight again
    zeros = sum(int((m.weight == 0).sum()) for m in targets)
    total = sum(m.weight.numel() for m in targets)
    return write_variant(job, "prune-magnitude", lambda folder: model.save_pretrained(str(folder)),
                         info={"sparsity": zeros / total},
                         notes=f"{zeros / total:.0%} of encoder Linear weights are zero, stored dense: dense "
                               "kernels multiply the zeros, so expect no speedup and no smaller file (sparse "
                               "kernels or compression of the file would be needed)")
