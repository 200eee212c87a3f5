"""A static KV cache with one slot per running sequence, and the per-step view a model writes into.

Written by hand because transformers' own continuous batching (paged attention, `generate_batch`,
`ContinuousBatchingManager`) is built for CUDA; on this CPU it did not finish 16 x 64 tokens of
SmolLM2 in minutes (see benchmarks/serve_load.py notes), and its sampling has no penalties or logprobs.

Layout per layer: keys and values of shape (slots, kv_heads, capacity, head_dim). Decoding sequences
occupy rows [0, d) so that a decode step reads a *view* `[:d, :, :length]` without copying; the engine
keeps them packed by moving a row when a sequence leaves. Capacity grows in blocks as sequences grow.
"""

from __future__ import annotations

import torch


class SlotKVCache:
    """Keys and values of every layer for `slots` sequences."""

    def __init__(self, num_layers: int, slots: int, kv_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype, device: torch.device, block: int = 128):
        self.num_layers, self.slots, self.kv_heads, self.head_dim = num_layers, slots, kv_heads, head_dim
        self.max_len, self.dtype, self.device, self.block = max_len, dtype, device, block
        self.capacity = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def ensure_capacity(self, length: int) -> None:
        """Grow every layer to hold `length` positions per slot (rounded up to a block)."""
        if length <= self.capacity:
            return
        new = min(self.max_len, -(-length // self.block) * self.block)
        new = max(new, length)
        shape = (self.slots, self.kv_heads, new, self.head_dim)
        for store in (self.keys, self.values):
            for i in range(self.num_layers):
                grown = torch.zeros(shape, dtype=self.dtype, device=self.device)
                if store and self.capacity:
                    # sliced: after a growth that failed half-way (out of GPU memory) some layers are longer
                    grown[:, :, :self.capacity] = store[i][:, :, :self.capacity]
                if len(store) > i:
                    store[i] = grown
                else:
                    store.append(grown)
        self.capacity = new

    def release(self) -> None:
        """Drop all memory (when the server is idle)."""
        self.keys, self.values, self.capacity = [], [], 0
        if self.device.type == "cuda":  # else PyTorch's caching allocator keeps the blocks from other processes
            torch.cuda.empty_cache()

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of slot `src` into slot `dst`."""
        for store in (self.keys, self.values):
            for layer in store:
                layer[dst, :, :length] = layer[src, :, :length]

    def swap(self, a: int, b: int, length: int) -> None:
        for store in (self.keys, self.values):
            for layer in store:
                tmp = layer[a, :, :length].clone()
                layer[a, :, :length] = layer[b, :, :length]
                layer[b, :, :length] = tmp

    def step(self, rows: torch.Tensor | None, positions: torch.Tensor, length: int) -> "StepCache":
        """The cache as one forward pass sees it.

        rows: slot of each batch row, or None for the packed decode rows [0, batch).
        positions: (batch, q) position of each query token, where its key/value is written.
        length: keys attended over, [0, length)."""
        return StepCache(self, rows, positions, length)


class StepCache:
    """Duck-typed `transformers` Cache for one forward: `update` writes the new keys/values at their
    positions and returns the keys/values the batch attends over (masked by the engine's 4D mask)."""

    is_compileable = False

    def __init__(self, cache: SlotKVCache, rows: torch.Tensor | None, positions: torch.Tensor, length: int):
        self.cache, self.rows, self.positions, self.length = cache, rows, positions, length
        batch = positions.shape[0]
        if rows is None:
            self.batch_index = torch.arange(batch, device=positions.device)
        else:
            self.batch_index = rows

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               cache_kwargs: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # key_states, value_states: (batch, kv_heads, q, head_dim)
        keys, values = self.cache.keys[layer_idx], self.cache.values[layer_idx]
        index = self.batch_index[:, None]
        keys[index, :, self.positions] = key_states.transpose(1, 2).to(keys.dtype)
        values[index, :, self.positions] = value_states.transpose(1, 2).to(values.dtype)
        if self.rows is None:  # packed decode rows: a view, no copy
            batch = self.positions.shape[0]
            return keys[:batch, :, :self.length], values[:batch, :, :self.length]
        return keys[self.rows, :, :self.length], values[self.rows, :, :self.length]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def get_mask_sizes(self, *args, **kwargs):  # only reached when the engine's 4D mask is not used
        raise NotImplementedError("StepCache is used with a prepared 4D attention mask")


def attention_mask(positions: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask (batch, 1, q, length): query at position p sees keys at positions <= p."""
    keys = torch.arange(length, device=positions.device)
    allowed = keys[None, None, :] <= positions[:, :, None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=positions.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]
