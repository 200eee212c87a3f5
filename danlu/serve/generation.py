"""POST /v1/completions and /v1/chat/completions: requests -> engine sequences -> OpenAI responses."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from danlu.serve.engine import DecoderEngine, Event, Sequence
from danlu.serve.errors import ApiError
from danlu.serve.sampling import SamplingParams, TokenChoice
from danlu.serve.schemas import ChatCompletionRequest, CompletionRequest


@dataclass
class _Choice:
    """What one choice accumulated so far."""

    text: str = ""
    tokens: list[TokenChoice] = field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: str | None = None


class Generator:
    """Turns validated requests into engine sequences and engine events into OpenAI JSON."""

    def __init__(self, engine: DecoderEngine, tokenizer, model_name: str, max_model_len: int,
                 max_tokens_limit: int):
        self.engine, self.tokenizer, self.model_name = engine, tokenizer, model_name
        self.max_model_len, self.max_tokens_limit = max_model_len, max_tokens_limit
        # ids the model has embeddings for: a tokenizer may know more tokens than its model (added tokens
        # without a resize); such an id fails the whole engine step (IndexError on CPU; on CUDA a device-side
        # assert, after which the process's CUDA context is unusable), so requests with one are refused
        self.vocab = min(len(tokenizer), engine.model.get_input_embeddings().num_embeddings)

    # ---- prompts and limits -----------------------------------------------------------------

    def completion_prompts(self, req: CompletionRequest) -> list[list[int]]:
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            if any(t < 0 for t in prompt):
                raise ApiError(400, f"prompt token ids must be in [0, {self.vocab})", param="prompt")
            return [list(prompt)]
        texts = [prompt] if isinstance(prompt, str) else prompt
        if not texts:
            raise ApiError(400, "prompt is empty", param="prompt")
        self.engine.check_fits(len(texts) * req.n)  # before the tokenizing: a 20,000-prompt list is a 400 at once
        return self.tokenizer(texts, add_special_tokens=True)["input_ids"]  # one batch call: the GIL is let go

    def chat_prompt(self, req: ChatCompletionRequest) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ApiError(400, "this model has no chat template; use /v1/completions", param="messages")
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def check_lengths(self, prompts: list[list[int]], max_tokens: int | None, default: int | None) -> int:
        """The max_tokens to use; 400 when the prompt or the request does not fit the limits."""
        longest = max(len(p) for p in prompts)
        if min(len(p) for p in prompts) == 0:
            raise ApiError(400, "prompt is empty (0 tokens)", param="prompt")
        if max(max(p) for p in prompts) >= self.vocab:
            raise ApiError(400, f"prompt token ids must be in [0, {self.vocab}) (the model's embeddings)",
                           param="prompt")
        if longest >= self.max_model_len:
            raise ApiError(400, f"prompt has {longest} tokens; this server's --max-model-len is "
                                f"{self.max_model_len} (prompt + generated tokens)", param="prompt",
                           code="context_length_exceeded")
        if max_tokens is None:
            max_tokens = default if default is not None else min(self.max_tokens_limit, self.max_model_len - longest)
        if max_tokens > self.max_tokens_limit:
            raise ApiError(400, f"max_tokens is {max_tokens}; this server allows at most "
                                f"{self.max_tokens_limit} (--max-tokens-limit)", param="max_tokens")
        if longest + max_tokens > self.max_model_len:
            raise ApiError(400, f"prompt ({longest} tokens) + max_tokens ({max_tokens}) exceed --max-model-len "
                                f"{self.max_model_len}", param="max_tokens", code="context_length_exceeded")
        return max_tokens

    # ---- running ----------------------------------------------------------------------------

    def _sequences(self, prompts: list[list[int]], n: int, params: SamplingParams,
                   queue: asyncio.Queue, loop: asyncio.AbstractEventLoop) -> list[Sequence]:
        seqs = []
        for p_index, prompt in enumerate(prompts):
            for j in range(n):
                index = p_index * n + j
                seed = None if params.seed is None else params.seed + index  # n choices must differ
                p = SamplingParams(**{**params.__dict__, "seed": seed})

                def emit(event: Event, index=index) -> None:  # engine thread -> event loop
                    loop.call_soon_threadsafe(queue.put_nowait, (index, event))

                seqs.append(Sequence(prompt, p, emit, self.tokenizer))
        return seqs

    async def _events(self, seqs: list[Sequence], queue: asyncio.Queue,
                      request: Request) -> AsyncIterator[tuple[int, Event]]:
        """Engine events of all choices until each has finished; cancels them if the client leaves."""
        self.engine.submit(seqs)  # NeverFits, QueueFull, WorkerDead: answered by danlu.serve.errors
        pending = len(seqs)
        try:
            while pending:
                try:
                    index, event = await asyncio.wait_for(queue.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    continue
                if event.finish_reason is not None:
                    pending -= 1
                yield index, event
        finally:
            for seq in seqs:  # client gone or generator closed early: free the slots
                self.engine.cancel(seq)

    async def run(self, request: Request, prompts: list[list[int]], n: int, params: SamplingParams,
                  stream: bool, include_usage: bool, chat: bool, return_token_ids: bool):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        seqs = self._sequences(prompts, n, params, queue, loop)
        events = self._events(seqs, queue, request)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        prompt_tokens = sum(len(p) for p in prompts)
        if not stream:
            choices = [_Choice() for _ in seqs]
            async for index, event in events:
                _accumulate(choices[index], event)
            return JSONResponse(self._full_response(rid, created, choices, seqs, prompt_tokens, chat,
                                                    params.logprobs, return_token_ids))
        first = await _first_or_error(events)  # a 429 must be an HTTP status, not a stream
        return StreamingResponse(
            self._stream(first, events, rid, created, len(seqs), seqs, prompt_tokens, chat, include_usage,
                         params.logprobs, return_token_ids),
            media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    # ---- OpenAI JSON ------------------------------------------------------------------------

    def _token_text(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def _logprobs(self, tokens: list[TokenChoice], chat: bool, top: int | None, offset: int = 0):
        if top is None:
            return None
        tokens = [t for t in tokens if t.logprob is not None]
        if chat:
            def entry(tok: int, lp: float) -> dict:
                text = self._token_text(tok)
                return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}

            return {"content": [{**entry(t.token, t.logprob),
                                 "top_logprobs": [entry(i, lp) for i, lp in (t.top or [])]} for t in tokens]}
        texts = [self._token_text(t.token) for t in tokens]
        offsets, at = [], offset
        for text in texts:
            offsets.append(at)
            at += len(text)
        return {"tokens": texts, "token_logprobs": [t.logprob for t in tokens],
                "top_logprobs": [{self._token_text(i): lp for i, lp in (t.top or [])} for t in tokens],
                "text_offset": offsets}

    def _full_response(self, rid, created, choices, seqs, prompt_tokens, chat, top, return_token_ids) -> dict:
        errors = [c.error for c in choices if c.error]
        if errors:
            raise ApiError(500, f"generation failed: {errors[0]}", "server_error")
        out = []
        for i, (c, seq) in enumerate(zip(choices, seqs)):
            item = {"index": i, "logprobs": self._logprobs(c.tokens, chat, top), "finish_reason": c.finish_reason}
            if chat:
                item["message"] = {"role": "assistant", "content": c.text}
            else:
                item["text"] = c.text
            if return_token_ids:
                item["token_ids"] = list(seq.generated)
            out.append(item)
        completion = sum(c.completion_tokens for c in choices)
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                "model": self.model_name, "choices": out,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                          "total_tokens": prompt_tokens + completion}}

    async def _stream(self, first, events, rid, created, count, seqs, prompt_tokens, chat, include_usage,
                      top, return_token_ids) -> AsyncIterator[str]:
        kind = "chat.completion.chunk" if chat else "text_completion"
        choices = [_Choice() for _ in range(count)]
        started = [False] * count
        offsets = [0] * count
        pending_tokens: list[list[TokenChoice]] = [[] for _ in range(count)]

        def chunk(items: list[dict], usage=None) -> str:
            body = {"id": rid, "object": kind, "created": created, "model": self.model_name, "choices": items}
            if include_usage:
                body["usage"] = usage
            return f"data: {json.dumps(body)}\n\n"

        async def all_events():
            if first is not None:
                yield first
            async for item in events:
                yield item

        try:
            async for index, event in all_events():
                c = choices[index]
                _accumulate(c, event)
                if event.choice is not None:
                    pending_tokens[index].append(event.choice)
                if not event.text and event.finish_reason is None:
                    continue  # text held back (a possible stop string or a split character)
                if event.error:
                    yield f"data: {json.dumps({'error': {'message': event.error, 'type': 'server_error'}})}\n\n"
                    continue
                item = {"index": index, "logprobs": self._logprobs(pending_tokens[index], chat, top, offsets[index]),
                        "finish_reason": event.finish_reason}
                offsets[index] += len(event.text)
                pending_tokens[index] = []
                if chat:
                    item["delta"] = {"content": event.text}
                    if not started[index]:
                        item["delta"]["role"] = "assistant"
                        started[index] = True
                else:
                    item["text"] = event.text
                if return_token_ids and event.finish_reason is not None:
                    item["token_ids"] = list(seqs[index].generated)
                yield chunk([item])
            if include_usage:
                completion = sum(c.completion_tokens for c in choices)
                yield chunk([], {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                                 "total_tokens": prompt_tokens + completion})
            yield "data: [DONE]\n\n"
        finally:
            await events.aclose()


def _accumulate(choice: _Choice, event: Event) -> None:
    choice.text += event.text
    if event.choice is not None:
        choice.tokens.append(event.choice)
    choice.completion_tokens = event.completion_tokens
    if event.finish_reason is not None:
        choice.finish_reason = event.finish_reason
        choice.error = event.error


async def _first_or_error(events):
    """The first event (so that errors raised before any output become HTTP statuses)."""
    try:
        return await events.__anext__()
    except StopAsyncIteration:
        return None


def sampling_params(req, max_tokens: int, logprobs: int | None) -> SamplingParams:
    top_k = 0 if req.top_k in (0, -1) else req.top_k
    return SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, top_k=top_k,
                          seed=req.seed, stop=req.stop_list(), presence_penalty=req.presence_penalty,
                          frequency_penalty=req.frequency_penalty, logprobs=logprobs, ignore_eos=req.ignore_eos)
