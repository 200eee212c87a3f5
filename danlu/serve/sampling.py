"""Choosing the next token of every row of a batch: penalties, greedy or seeded sampling, logprobs."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

GREEDY_BELOW = 1e-5  # vLLM's _SAMPLING_EPS


@dataclass
class SamplingParams:
    """What a request asks of the decoder (OpenAI semantics)."""

    max_tokens: int = 16
    temperature: float = 1.0  # below GREEDY_BELOW means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means off
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # how many top alternatives to report per token; None means none
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        # as vLLM: a temperature this small is greedy (dividing by it would overflow to inf/nan)
        return self.temperature < GREEDY_BELOW or self.top_k == 1


@dataclass
class TokenChoice:
    token: int
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None


def apply_penalties(logits: torch.Tensor, generated: list[int], presence: float, frequency: float) -> None:
    """OpenAI's penalties, in place on one row: logit -= frequency * count + presence * (count > 0)."""
    if not generated:
        return
    tokens = torch.tensor(generated, device=logits.device)
    counts = torch.bincount(tokens, minlength=logits.shape[-1])[: logits.shape[-1]].to(logits.dtype)
    logits -= frequency * counts + presence * (counts > 0).to(logits.dtype)


def sample_row(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token from one row of logits (float32) with temperature, top-k and top-p."""
    logits = logits / params.temperature
    if params.top_k > 0 and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        drop = probs.cumsum(-1) - probs > params.top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def choose_tokens(logits: torch.Tensor, params: list[SamplingParams], generated: list[list[int]],
                  generators: list[torch.Generator | None]) -> list[TokenChoice]:
    """Next token of each row of `logits` (batch, vocab); logprobs are of the model's distribution
    after penalties, before temperature (as vLLM reports them)."""
    logits = logits.float()
    for i, p in enumerate(params):
        if p.presence_penalty or p.frequency_penalty:
            apply_penalties(logits[i], generated[i], p.presence_penalty, p.frequency_penalty)
    greedy = logits.argmax(-1).tolist()
    want_logprobs = [i for i, p in enumerate(params) if p.logprobs is not None]
    logprobs = torch.log_softmax(logits[want_logprobs], -1) if want_logprobs else None
    choices = []
    for i, p in enumerate(params):
        token = greedy[i] if p.greedy else sample_row(logits[i], p, generators[i])
        choice = TokenChoice(token)
        if logprobs is not None and p.logprobs is not None:
            row = logprobs[want_logprobs.index(i)]
            choice.logprob = float(row[token])
            if p.logprobs > 0:
                top = torch.topk(row, p.logprobs)
                choice.top = list(zip(top.indices.tolist(), top.values.tolist()))
        choices.append(choice)
    return choices
