"""Continuous batching for decoders: sequences join the running batch at the next step and leave when done.

One background thread runs the loop. Each iteration:
1. admits waiting sequences into free KV-cache slots (they start in *prefill*);
2. prefills up to `prefill_chunk` prompt tokens, spread over the sequences in prefill (chunked, so a
   long prompt takes several iterations instead of stalling everyone);
3. runs one decode step for all decoding sequences together (one new token each).
A sequence leaves at EOS, a stop string, max_tokens, the model length, or when its client goes away;
its slot is freed at once. Results go back through each sequence's `emit` callback (engine thread).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from danlu.serve.cpu_linear import speed_up_linears
from danlu.serve.kv_cache import SlotKVCache, attention_mask
from danlu.serve.sampling import SamplingParams, TokenChoice, choose_tokens
from danlu.serve.text import TextTracker
from danlu.serve.worker import BackgroundWorker, QueueFull, check_fits

log = logging.getLogger("danlu.serve")


__all__ = ["DecoderEngine", "Event", "QueueFull", "Sequence"]


@dataclass
class Event:
    """What one engine step produced for one sequence."""

    text: str
    choice: TokenChoice | None
    finish_reason: str | None  # "stop", "length", "error" or None while running
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


@dataclass
class Sequence:
    prompt: list[int]
    params: SamplingParams
    emit: Callable[[Event], None]
    tokenizer: object
    id: int = field(default_factory=itertools.count().__next__)
    arrival: float = field(default_factory=time.perf_counter)
    generated: list[int] = field(default_factory=list)
    prefilled: int = 0  # prompt tokens already in the KV cache
    row: int = -1
    first_token_at: float | None = None
    finished: bool = False

    def __post_init__(self) -> None:
        self.text = TextTracker(self.tokenizer, self.params.stop)
        self.generator: torch.Generator | None = None  # seeded sampling; made by the engine on its device

    @property
    def cached(self) -> int:
        """Positions of this sequence held in the KV cache."""
        return self.prefilled + max(0, len(self.generated) - 1)


class DecoderEngine(BackgroundWorker):
    """Continuous-batching generation over a `SlotKVCache` (one slot per running sequence)."""

    thread_name = "danlu-engine"

    def __init__(self, model, tokenizer, *, max_batch_size: int, max_queue: int, max_model_len: int,
                 prefill_chunk: int, metrics=None):
        super().__init__()
        self.model, self.tokenizer, self.metrics = model, tokenizer, metrics
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self.max_model_len, self.prefill_chunk = max_model_len, prefill_chunk
        self.base = getattr(model, model.base_model_prefix)
        self.lm_head = model.get_output_embeddings()
        config = model.config.get_text_config()
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device
        if self.device.type == "cpu":
            speed_up_linears(model)
        self.cache = SlotKVCache(config.num_hidden_layers, max_batch_size, kv_heads, head_dim,
                                 max_model_len, self.dtype, self.device)
        eos = model.generation_config.eos_token_id if model.generation_config else None
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.waiting: deque[Sequence] = deque()
        self.prefilling: list[Sequence] = []
        self.decoding: list[Sequence] = []  # decoding[i].row == i: packed rows [0, d)
        self.owner: list[Sequence | None] = [None] * max_batch_size
        self.cancelled: set[int] = set()
        self.idle_since = time.perf_counter()

    # ---- called from the server's threads ------------------------------------------------------

    def check_fits(self, count: int) -> None:
        """NeverFits (400) for a request of more sequences than an idle engine could ever hold."""
        check_fits(count, self.max_batch_size, self.max_queue, "sequences (prompts x n)", "n")

    def submit(self, sequences: list[Sequence]) -> None:
        """Queue sequences (all or none); NeverFits when no idle engine could take them, QueueFull when
        this one cannot now, WorkerDead when the engine thread has died."""
        self.check_fits(len(sequences))
        with self.cond:
            self.check_alive()
            if len(self.waiting) + len(sequences) > self.max_queue + self._free_slots():
                raise QueueFull
            self.waiting.extend(sequences)
            self.cond.notify()

    def cancel(self, sequence: Sequence) -> None:
        """Stop a sequence (its client went away): its slot is freed at the next step."""
        with self.cond:
            if not sequence.finished:
                self.cancelled.add(sequence.id)
                self.cond.notify()

    def stats(self) -> dict[str, int]:
        return {"waiting": len(self.waiting), "running": len(self.prefilling) + len(self.decoding),
                "decoding": len(self.decoding), "kv_capacity": self.cache.capacity}

    # ---- the engine thread ---------------------------------------------------------------------

    def _free_slots(self) -> int:
        return self.max_batch_size - len(self.prefilling) - len(self.decoding)

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self.cond:
                    self._drop_cancelled()
                    self._admit()
                    if self.metrics:
                        self.metrics.set_load(len(self.waiting), len(self.prefilling) + len(self.decoding))
                    if not self.running:
                        break
                    if not (self.prefilling or self.decoding):
                        if time.perf_counter() - self.idle_since > 10:
                            self.cache.release()  # give the memory back while nobody asks
                        self.cond.wait(timeout=1.0)
                        continue
                try:
                    if self.prefilling:
                        self._prefill_step()
                    if self.decoding:
                        self._decode_step()
                except Exception as e:  # a failed step fails its sequences, never the server
                    log.exception("engine step failed")
                    for seq in list(self.prefilling) + list(self.decoding):
                        self._finish(seq, "error", "", error=f"{type(e).__name__}: {e}")
                self.idle_since = time.perf_counter()
        for seq in list(self.waiting) + list(self.prefilling) + list(self.decoding):
            self._finish(seq, "error", "", error="server shutting down")

    def _admit(self) -> None:
        while self.waiting and self._free_slots() > 0:
            seq = self.waiting.popleft()
            if seq.params.seed is not None and not seq.params.greedy:
                try:  # on the device that samples: torch.multinomial takes only a generator of its input's device
                    seq.generator = torch.Generator(self.device).manual_seed(seq.params.seed)
                except (RuntimeError, ValueError, OverflowError) as e:  # validated before; fail it alone if not
                    self._finish(seq, "error", "", error=f"seed {seq.params.seed}: {e}")
                    continue
            seq.row = max(i for i, owner in enumerate(self.owner) if owner is None)  # from the top
            self.owner[seq.row] = seq
            self.prefilling.append(seq)

    def _fail_pending(self, reason: str) -> None:
        for seq in [*self.waiting, *self.prefilling, *self.decoding]:
            if not seq.finished:
                seq.finished = True
                seq.emit(Event("", None, "error", len(seq.prompt), len(seq.generated), error=reason))
        self.waiting.clear()
        self.prefilling.clear()
        self.decoding.clear()

    def _drop_cancelled(self) -> None:
        if not self.cancelled:
            return
        for seq in [s for s in self.waiting if s.id in self.cancelled]:
            self.waiting.remove(seq)
            seq.finished = True
        for seq in [s for s in self.prefilling + self.decoding if s.id in self.cancelled]:
            self._release(seq)
            seq.finished = True
            if self.metrics:
                self.metrics.finished(seq, time.perf_counter())
        self.cancelled.clear()

    def _release(self, seq: Sequence) -> None:
        """Free the slot of a sequence in prefill or decode (keeping decode rows packed)."""
        if seq in self.prefilling:
            self.prefilling.remove(seq)
            self.owner[seq.row] = None
            return
        last = self.decoding[-1]
        if last is not seq:
            self.cache.move(last.row, seq.row, self._held(last))
            self.decoding[seq.row] = last
            self.owner[seq.row] = last
            last.row = seq.row
        self.decoding.pop()
        self.owner[len(self.decoding)] = None

    def _held(self, seq: Sequence) -> int:
        # one more than `cached`: mid-step, the key/value just written for this step may not be counted yet
        return min(self.cache.capacity, seq.cached + 1)

    def _promote(self, seq: Sequence) -> None:
        """A sequence whose prompt is in the cache moves to the next packed decode row."""
        target = len(self.decoding)
        self.prefilling.remove(seq)
        if seq.row != target:
            other = self.owner[target]
            if other is None:
                self.cache.move(seq.row, target, self._held(seq))
                self.owner[seq.row] = None
            else:  # another sequence in prefill sits there: swap them
                self.cache.swap(seq.row, target, max(self._held(seq), self._held(other)))
                self.owner[seq.row], other.row = other, seq.row
            seq.row = target
            self.owner[target] = seq
        self.decoding.append(seq)

    def _forward(self, input_ids: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor | None,
                 last: torch.Tensor) -> torch.Tensor:
        """Logits (batch, vocab) at query index `last` of each row; keys/values land in the cache."""
        length = int(positions.max()) + 1
        self.cache.ensure_capacity(length)
        step = self.cache.step(rows, positions, length)
        mask = attention_mask(positions, length, self.dtype)
        hidden = self.base(input_ids=input_ids, position_ids=positions, attention_mask=mask,
                           past_key_values=step, use_cache=True).last_hidden_state
        hidden = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.lm_head(hidden)

    def _prefill_step(self) -> None:
        budget, batch = self.prefill_chunk, []
        for seq in self.prefilling:
            take = min(len(seq.prompt) - seq.prefilled, budget)
            if take <= 0:
                break
            batch.append((seq, take))
            budget -= take
        width = max(take for _, take in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        positions = torch.empty((len(batch), width), dtype=torch.long)
        for i, (seq, take) in enumerate(batch):
            ids[i, :take] = torch.tensor(seq.prompt[seq.prefilled:seq.prefilled + take])
            # padding queries take the following positions: their keys are overwritten before use
            positions[i] = torch.arange(seq.prefilled, seq.prefilled + width)
        rows = torch.tensor([seq.row for seq, _ in batch], device=self.device)
        last = torch.tensor([take - 1 for _, take in batch], device=self.device)
        logits = self._forward(ids.to(self.device), positions.to(self.device), rows, last)
        done = []
        for i, (seq, take) in enumerate(batch):
            seq.prefilled += take
            if seq.prefilled == len(seq.prompt):
                done.append((i, seq))
        if done:
            self._sample([seq for _, seq in done], logits[[i for i, _ in done]])
            for _, seq in done:
                if not seq.finished:
                    self._promote(seq)

    def _decode_step(self) -> None:
        seqs = list(self.decoding)
        ids = torch.tensor([[seq.generated[-1]] for seq in seqs], device=self.device)
        positions = torch.tensor([[seq.cached] for seq in seqs], device=self.device)
        logits = self._forward(ids, positions, None, torch.zeros(len(seqs), dtype=torch.long, device=self.device))
        self._sample(seqs, logits)

    def _choose(self, seqs: list[Sequence], logits: torch.Tensor) -> list[TokenChoice | Exception]:
        """Next tokens of the batch; should one row fail, each row alone, so only that row's request fails."""
        try:
            return choose_tokens(logits, [s.params for s in seqs], [s.generated for s in seqs],
                                 [s.generator for s in seqs])
        except Exception:  # noqa: BLE001 -- isolate the row at fault below
            choices: list[TokenChoice | Exception] = []
            for i, seq in enumerate(seqs):
                try:
                    choices += choose_tokens(logits[i:i + 1], [seq.params], [seq.generated], [seq.generator])
                except Exception as e:  # noqa: BLE001
                    log.exception("sampling failed for one sequence")
                    choices.append(e)
            return choices

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        choices = self._choose(seqs, logits)
        now = time.perf_counter()
        for seq, choice in zip(seqs, choices):
            if isinstance(choice, Exception):
                self._finish(seq, "error", "", error=f"sampling failed: {type(choice).__name__}: {choice}")
                continue
            if seq.first_token_at is None:
                seq.first_token_at = now
                if self.metrics:
                    self.metrics.first_token(now - seq.arrival, len(seq.prompt))
            seq.generated.append(choice.token)
            reason, text = None, ""
            if choice.token in self.eos and not seq.params.ignore_eos:
                reason = "stop"
            else:
                text = seq.text.add(choice.token)
                if seq.text.stopped:
                    reason = "stop"
            if reason is None and (len(seq.generated) >= seq.params.max_tokens
                                   or len(seq.prompt) + len(seq.generated) >= self.max_model_len):
                reason = "length"
            if reason:
                self._release(seq)
                self._finish(seq, reason, text + seq.text.flush(), choice=choice)
            else:
                seq.emit(Event(text, choice, None, len(seq.prompt), len(seq.generated)))

    def _finish(self, seq: Sequence, reason: str, text: str, choice: TokenChoice | None = None,
                error: str | None = None) -> None:
        if seq.finished:
            return
        if reason == "error" and (seq in self.prefilling or seq in self.decoding):
            self._release(seq)
        seq.finished = True
        if self.metrics:
            self.metrics.finished(seq, time.perf_counter())
        seq.emit(Event(text, choice, reason, len(seq.prompt), len(seq.generated), error=error))
