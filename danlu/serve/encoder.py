"""Dynamic micro-batching for encoders: /v1/embeddings, /v1/classify and every encoder task route.

Requests put their inputs on a queue; one worker thread takes everything that arrived within
`batch_wait_ms` of the first waiting input (up to `max_batch_size` inputs), runs one forward pass,
and hands each request its rows back on the event loop. A runner that fails on a batch is run again
on each request of that batch alone, so one bad input fails only the request that sent it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import torch

from danlu.serve.worker import BackgroundWorker, QueueFull, WorkerDead, check_fits

log = logging.getLogger("danlu.serve")


@dataclass
class _Item:
    inputs: list[Any]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    arrival: float


class MicroBatcher(BackgroundWorker):
    """Runs `run(inputs) -> (results, token_counts)` over micro-batches gathered from many requests.

    `run` may raise for a batch: the batch's requests are then retried one at a time, and only those
    that fail alone get the error (a runner raises `danlu.serve.worker.BadInput` for a 400)."""

    thread_name = "danlu-encoder"

    def __init__(self, run: Callable[[list[Any]], tuple[list[Any], list[int]]], max_batch_size: int,
                 batch_wait_ms: float, max_queue: int, metrics=None):
        super().__init__()
        self.run, self.max_batch_size = run, max_batch_size
        self.wait_s, self.max_queue, self.metrics = batch_wait_ms / 1000, max_queue, metrics
        self.queue: deque[_Item] = deque()
        self.current: list[_Item] = []  # the batch being run
        self.busy = 0

    async def submit(self, inputs: list[Any]) -> tuple[list[Any], list[int]]:
        """This request's results and token counts; NeverFits (400) when no idle server could take it,
        QueueFull (429) when this one cannot now, WorkerDead (503) when the worker has died."""
        check_fits(len(inputs), self.max_batch_size, self.max_queue, "inputs", "input")
        loop = asyncio.get_running_loop()
        item = _Item(list(inputs), loop.create_future(), loop, time.perf_counter())
        with self.cond:
            self.check_alive()
            if sum(len(i.inputs) for i in self.queue) + len(inputs) > self.max_queue + self.max_batch_size:
                raise QueueFull
            self.queue.append(item)
            self.cond.notify()
        return await item.future

    def stats(self) -> dict[str, int]:
        return {"waiting": sum(len(i.inputs) for i in self.queue), "running": self.busy}

    def _take_batch(self) -> list[_Item]:
        with self.cond:
            while self.running and not self.queue:
                self.cond.wait(timeout=1.0)
            if not self.queue:
                return []
            deadline = self.queue[0].arrival + self.wait_s
            while (self.running and sum(len(i.inputs) for i in self.queue) < self.max_batch_size
                   and time.perf_counter() < deadline):
                self.cond.wait(timeout=max(0.0, deadline - time.perf_counter()))
            items, count = [], 0
            while self.queue and (not items or count + len(self.queue[0].inputs) <= self.max_batch_size):
                item = self.queue.popleft()
                items.append(item)
                count += len(item.inputs)
            self.current = items
            return items

    def _run_inputs(self, inputs: list[Any]) -> tuple[list[Any], list[int]]:
        results, counts = [], []
        for start in range(0, len(inputs), self.max_batch_size):
            r, c = self.run(inputs[start:start + self.max_batch_size])
            results += r
            counts += c
        return results, counts

    def _run_batch(self, items: list[_Item]) -> list[tuple[Any, BaseException | None]]:
        """(results, token counts) or the error, for each request of the batch."""
        try:
            results, counts = self._run_inputs([x for item in items for x in item.inputs])
        except Exception as e:  # noqa: BLE001 -- find the request at fault: run each alone
            if len(items) == 1:
                log.debug("runner failed", exc_info=True)
                return [(None, e)]
            return [self._run_batch([item])[0] for item in items]
        answers, offset = [], 0
        for item in items:
            n = len(item.inputs)
            answers.append(((results[offset:offset + n], counts[offset:offset + n]), None))
            offset += n
        return answers

    def _loop(self) -> None:
        with torch.inference_mode():
            while self.running or self.queue:
                items = self._take_batch()
                if not items:
                    continue
                self.busy = sum(len(item.inputs) for item in items)
                if self.metrics:
                    self.metrics.set_load(self.stats()["waiting"], self.busy)
                answers = self._run_batch(items)
                now = time.perf_counter()
                for item, (answer, error) in zip(items, answers):
                    item.loop.call_soon_threadsafe(_resolve, item.future, answer, error)
                    if self.metrics and error is None:
                        self.metrics.e2e.observe(now - item.arrival)
                        self.metrics.prompt_tokens.inc(sum(answer[1]))
                self.current, self.busy = [], 0

    def _fail_pending(self, reason: str) -> None:
        for item in [*self.current, *self.queue]:
            item.loop.call_soon_threadsafe(_resolve, item.future, None, WorkerDead(reason))
        self.queue.clear()
        self.current = []


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
    from danlu.tasks import task_options

    options = task_options(task, loaded.manifest.args)

    def tokens(item) -> int:
        texts = [item] if isinstance(item, str) else [v for v in item.values() if isinstance(v, str)]
        return sum(len(ids) for ids in loaded.tokenizer(texts)["input_ids"])

    def run(inputs: list) -> tuple[list[dict], list[int]]:
        results = task.predict(loaded.model, loaded.tokenizer, inputs, loaded.labels, loaded.max_length,
                               batch_size=len(inputs), **options)
        return results, [tokens(item) for item in inputs]

    return run
