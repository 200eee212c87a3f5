"""A lean decode step for Llama-style decoders: the engine's one-token-per-sequence forward in ~20 torch ops
per layer instead of transformers' ~35 (plus its per-call Python: kwargs, decorators, mask and cache
plumbing), over the engine's `SlotKVCache`.

At one client a decode step of SmolLM2-135M spent about half its time outside the weights' products
(RMSNorm, rotary, the cache update, SDPA, and Python around ~1000 small ops). Here each layer is:
RMSNorm (with the residual add before it, one C call: `danlu_add_rms_norm`) -> one q/k/v product (the three weights stacked) -> rotary on q and k together
(precomputed cos/sin tables) -> the new key/value written into the cache (one index_put each) -> SDPA
over the cache view with the query packed per key/value head (as transformers does for one query) ->
output product -> residual add + RMSNorm -> one gate/up product (stacked) -> SiLU * up -> down product
(added to the residual by the next layer's norm).

Stacking keeps one copy of the weights: the stacked tensor is made once and the model's own q/k/v and
gate/up layers are pointed at row slices of it, so `generate` and the prefill (still transformers'
forward) use the same memory. For int8 weights each output row is the same dot product as before
(danlu's kernel computes rows independently), so stacking changes no bit; for float weights BLAS may sum
in another order (last-bit differences, as between batch sizes already).

Used for float32 models (int8/int4 included) on CPU whose `model_type` is `llama` with the default rotary
embedding and SiLU; anything else keeps transformers' forward (`unsupported` says why).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from danlu.kernels import kernel_function
from danlu.kernels.linear import KernelLinear
from danlu.serve.cpu_linear import speed_up_linears
from danlu.serve.kv_cache import SlotKVCache, attention_mask


def _stack(modules: list) -> torch.nn.Module:
    """One layer computing the outputs of `modules` (all nn.Linear, or all of one KernelLinear class) side by
    side; the originals then hold row slices of its weights (no second copy)."""
    kind = type(modules[0])
    if issubclass(kind, KernelLinear):
        names = list(kind.weights)
        fused = kind(*[None if getattr(modules[0], name) is None else torch.cat([getattr(m, name) for m in modules])
                       for name in names])
        start = 0
        for m in modules:
            end = start + m.out_features
            for name in names:
                if getattr(fused, name) is not None:
                    setattr(m, name, getattr(fused, name)[start:end])
            start = end
        return fused
    weight = torch.cat([m.weight.detach() for m in modules])
    bias = None if modules[0].bias is None else torch.cat([m.bias.detach() for m in modules])
    fused = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device,
                            dtype=weight.dtype)
    fused.weight = torch.nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        fused.bias = torch.nn.Parameter(bias, requires_grad=False)
    start = 0
    for m in modules:
        end = start + m.out_features
        m.weight = torch.nn.Parameter(fused.weight[start:end], requires_grad=False)
        if bias is not None:
            m.bias = torch.nn.Parameter(fused.bias[start:end], requires_grad=False)
        start = end
    return fused


def unsupported(model) -> str | None:
    """Why `model` cannot use the lean step (None when it can)."""
    config = model.config.get_text_config()
    if config.model_type != "llama":
        return f"model_type {config.model_type!r} is not llama"
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope != "default":
        return f"rotary embedding {rope!r}"
    if config.hidden_act != "silu":
        return f"activation {config.hidden_act!r}"
    base = getattr(model, model.base_model_prefix)
    for layer in base.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for group in ((attn.q_proj, attn.k_proj, attn.v_proj), (attn.o_proj,), (mlp.gate_proj, mlp.up_proj),
                      (mlp.down_proj,)):
            kinds = {type(module) for module in group}
            kind = next(iter(kinds))
            if len(kinds) > 1:
                return f"layers stored differently side by side ({', '.join(sorted(k.__name__ for k in kinds))})"
            if not (issubclass(kind, KernelLinear) or (kind is torch.nn.Linear
                                                       and type(group[0].weight.data) is torch.Tensor)):
                return f"a {kind.__name__} layer (quantized variants keep transformers' forward)"
    if next(model.parameters()).device.type != "cpu":
        return "not on CPU (on CUDA transformers' forward is already one kernel per op)"
    if model.get_input_embeddings().weight.dtype != torch.float32:
        # bf16 rounds differently from transformers' RMSNorm (float32 inside) and rotary: greedy parity broke
        return f"dtype {model.get_input_embeddings().weight.dtype} (the lean step computes in float32)"
    return None


class LlamaDecodeStep:
    """The decode forward of a Llama-style model over a `SlotKVCache` (packed decode rows [0, batch))."""

    def __init__(self, model, cache: SlotKVCache, max_len: int):
        config = model.config.get_text_config()
        base = getattr(model, model.base_model_prefix)
        self.cache, self.lm_head = cache, model.get_output_embeddings()
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.hidden = config.hidden_size
        self.intermediate = config.intermediate_size
        self.embed = base.embed_tokens.weight
        self.norm = (base.norm.weight, base.norm.variance_epsilon)
        self.layers = []
        for layer in base.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append((
                (layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon),
                _stack([attn.q_proj, attn.k_proj, attn.v_proj]), attn.o_proj,
                (layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon),
                _stack([mlp.gate_proj, mlp.up_proj]), mlp.down_proj))
        # the stacked float layers get the engine's transposed product for a few rows, as the model's own have
        speed_up_linears(torch.nn.ModuleList([m for layer in self.layers for m in (layer[1], layer[4])]))
        self.scaling = self.head_dim ** -0.5
        # cos/sin of every position as transformers' rotary module computes them; sin signed for rotate_half
        positions = torch.arange(max_len, device=self.embed.device)[None]
        cos, sin = base.rotary_emb(self.embed[:1], positions)
        half = self.head_dim // 2
        self.cos = cos[0].contiguous()
        self.sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1).contiguous()
        self.dtype = self.embed.dtype
        # residual add + RMSNorm in one C call (float32; transformers' RMSNorm is ~8 torch ops)
        fused = self.hidden % 8 == 0
        self.add_rms_norm = kernel_function("danlu_add_rms_norm") if fused else None

    def _norm(self, h: torch.Tensor, delta: torch.Tensor | None, norm: tuple) -> torch.Tensor:
        """h += delta (in place), then RMSNorm(h) with `norm` = (weight, eps)."""
        if self.add_rms_norm is None:
            if delta is not None:
                h += delta
            return F.rms_norm(h, (self.hidden,), norm[0], norm[1])
        out = torch.empty_like(h)
        self.add_rms_norm(h.data_ptr(), None if delta is None else delta.data_ptr(), norm[0].data_ptr(), norm[1],
                          out.data_ptr(), h.shape[0], self.hidden)
        return out

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits (batch, vocab) for one new token per packed row: ids and positions of shape (batch,)."""
        batch, kv, heads, dim = ids.shape[0], self.kv_heads, self.heads, self.head_dim
        length = int(positions.max()) + 1
        self.cache.ensure_capacity(length)
        mask = attention_mask(positions[:, None], length, self.dtype)  # (batch, 1, 1, length)
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]  # (batch, 1, dim)
        where = (torch.arange(batch, device=ids.device), slice(None), positions)
        half = dim // 2
        h, delta = F.embedding(ids, self.embed), None
        for i, (norm1, qkv_proj, o_proj, norm2, gate_up, down) in enumerate(self.layers):
            x = self._norm(h, delta, norm1)
            qkv = qkv_proj(x)
            qk = qkv[:, :(heads + kv) * dim].view(batch, heads + kv, 2, half)
            qk = torch.addcmul(qk.view(batch, heads + kv, dim) * cos, qk.flip(2).view(batch, heads + kv, dim), sin)
            keys, values = self.cache.keys[i], self.cache.values[i]
            keys[where] = qk[:, heads:]
            values[where] = qkv[:, (heads + kv) * dim:].view(batch, kv, dim)
            attn = F.scaled_dot_product_attention(
                qk[:, :heads].view(batch, kv, heads // kv, dim), keys[:batch, :, :length],
                values[:batch, :, :length], attn_mask=mask, scale=self.scaling)
            x = self._norm(h, o_proj(attn.reshape(batch, heads * dim)), norm2)
            gu = gate_up(x)
            delta = down(F.silu(gu[:, :self.intermediate]) * gu[:, self.intermediate:])
        return self.lm_head(self._norm(h, delta, self.norm))
