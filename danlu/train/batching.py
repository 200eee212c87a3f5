"""Deterministic batch plans: which examples form optimizer step `s`, on which process.

The plan depends only on (seed, epoch, lengths), never on a sampler's hidden state, so a resumed run
sees exactly the batches an uninterrupted one would, and a run on N processes sees the same global
batches as a run on one.
"""

from __future__ import annotations

import torch

BUCKET_BATCHES = 50  # how many batches are length-sorted together (padding falls, order stays random)


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int,
                  bucket_by_length: bool = True) -> list[list[int]]:
    """A shuffled list of global batches (lists of example indices) for one epoch."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    if bucket_by_length:
        chunk = batch_size * BUCKET_BATCHES
        order = [i for start in range(0, len(order), chunk)
                 for i in sorted(order[start:start + chunk], key=lambda i: lengths[i])]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if bucket_by_length:
        batch_order = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[i] for i in batch_order]
    return batches


def shard(batch: list[int], rank: int, world_size: int, grad_accum: int) -> list[list[int]]:
    """This process's micro-batches of a global batch: its 1/world_size, cut into grad_accum pieces."""
    mine = batch[rank::world_size]
    size = -(-len(mine) // grad_accum)  # ceil
    return [mine[i:i + size] for i in range(0, len(mine), size)] or [[]]
