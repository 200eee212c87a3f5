"""Dynamic micro-batching for encoders: /v1/embeddings and /v1/classify.

Requests put their texts on a queue; one worker thread takes everything that arrived within
`batch_wait_ms` of the first waiting text (up to `max_batch_size` texts), runs one forward pass,
and hands each request its rows back on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import torch

from danlu.serve.engine import QueueFull
from danlu.serve.worker import BackgroundWorker


@dataclass
class _Item:
    texts: list[str]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    arrival: float


class MicroBatcher(BackgroundWorker):
    """Runs `run(texts) -> (results, token_counts)` over micro-batches gathered from many requests."""

    thread_name = "danlu-encoder"

    def __init__(self, run: Callable[[list[str]], tuple[list[Any], list[int]]], max_batch_size: int,
                 batch_wait_ms: float, max_queue: int, metrics=None):
        super().__init__()
        self.run, self.max_batch_size = run, max_batch_size
        self.wait_s, self.max_queue, self.metrics = batch_wait_ms / 1000, max_queue, metrics
        self.queue: deque[_Item] = deque()
        self.busy = 0

    async def submit(self, texts: list[str]) -> tuple[list[Any], list[int]]:
        loop = asyncio.get_running_loop()
        item = _Item(texts, loop.create_future(), loop, time.perf_counter())
        with self.cond:
            if sum(len(i.texts) for i in self.queue) + len(texts) > self.max_queue + self.max_batch_size:
                raise QueueFull
            self.queue.append(item)
            self.cond.notify()
        return await item.future

    def stats(self) -> dict[str, int]:
        return {"waiting": sum(len(i.texts) for i in self.queue), "running": self.busy}

    def _take_batch(self) -> list[_Item]:
        with self.cond:
            while self.running and not self.queue:
                self.cond.wait(timeout=1.0)
            if not self.queue:
                return []
            deadline = self.queue[0].arrival + self.wait_s
            while (self.running and sum(len(i.texts) for i in self.queue) < self.max_batch_size
                   and time.perf_counter() < deadline):
                self.cond.wait(timeout=max(0.0, deadline - time.perf_counter()))
            items, count = [], 0
            while self.queue and (not items or count + len(self.queue[0].texts) <= self.max_batch_size):
                item = self.queue.popleft()
                items.append(item)
                count += len(item.texts)
            return items

    def _loop(self) -> None:
        with torch.inference_mode():
            while self.running or self.queue:
                items = self._take_batch()
                if not items:
                    continue
                texts = [t for item in items for t in item.texts]
                self.busy = len(texts)
                if self.metrics:
                    self.metrics.set_load(self.stats()["waiting"], len(texts))
                results, counts = [], []
                try:
                    for start in range(0, len(texts), self.max_batch_size):
                        r, c = self.run(texts[start:start + self.max_batch_size])
                        results += r
                        counts += c
                    offset = 0
                    for item in items:
                        n = len(item.texts)
                        part = (results[offset:offset + n], counts[offset:offset + n])
                        item.loop.call_soon_threadsafe(_resolve, item.future, part, None)
                        offset += n
                except Exception as e:  # a failed batch fails its requests, never the server
                    for item in items:
                        item.loop.call_soon_threadsafe(_resolve, item.future, None, e)
                now = time.perf_counter()
                if self.metrics:
                    for item in items:
                        self.metrics.e2e.observe(now - item.arrival)
                    self.metrics.prompt_tokens.inc(sum(counts))
                self.busy = 0


def _resolve(future: asyncio.Future, result, error) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def embedder_runner(model, tokenizer, max_length: int) -> Callable:
    """Mean-pooled (over real tokens), L2-normalised sentence embeddings, as sentence-transformers does."""
    device = next(model.parameters()).device

    def run(texts: list[str]) -> tuple[list[list[float]], list[int]]:
        enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items()}
        hidden = model(**enc).last_hidden_state.float()  # (batch, seq, hidden)
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        vectors = torch.nn.functional.normalize(pooled, dim=-1)
        return vectors.cpu().tolist(), enc["attention_mask"].sum(1).tolist()

    return run


def task_runner(task, loaded) -> Callable:
    """Results of the task's `predict` per input, and the tokens of each input (for usage and metrics)."""
    options = {name: loaded.manifest.args[name] for name in getattr(task, "OPTIONS", ()) if name in loaded.manifest.args}

    def tokens(item) -> int:
        texts = [item] if isinstance(item, str) else [v for v in item.values() if isinstance(v, str)]
        return sum(len(ids) for ids in loaded.tokenizer(texts)["input_ids"])

    def run(inputs: list) -> tuple[list[dict], list[int]]:
        results = task.predict(loaded.model, loaded.tokenizer, inputs, loaded.labels, loaded.max_length,
                               batch_size=len(inputs), **options)
        return results, [tokens(item) for item in inputs]

    return run
