"""`danlu serve`: the HTTP app (FastAPI + uvicorn) around a decoder engine or an encoder micro-batcher."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from danlu.errors import DanluError
from danlu.runtime.heads import DECODER_TASKS
from danlu.serve.args import ServeArgs
from danlu.serve.engine import DecoderEngine
from danlu.serve.errors import ApiError, add_error_handlers, error_response, openapi_schema
from danlu.serve.generation import Generator, sampling_params
from danlu.serve.metrics import Metrics
from danlu.serve.schemas import (ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ErrorResponse,
                                 TaskRequest)

log = logging.getLogger("danlu.serve")

ENDPOINTS = {"/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/classify",
             "/v1/ner", "/v1/qa", "/health", "/metrics"}


@dataclass
class ServerState:
    """What the endpoints need: the model's name and kind, and the engine that runs it."""

    name: str
    aliases: set[str]
    kind: str  # decoder | embedder | the task's kind (classifier, ...)
    metrics: Metrics
    max_model_len: int
    engine: DecoderEngine | None = None
    generator: Generator | None = None
    batcher: object | None = None  # encoder MicroBatcher
    task: object | None = None  # the task module of an encoder task (its ROUTE is served)
    created: int = 0

    def stats(self) -> dict:
        return (self.engine or self.batcher).stats()

    def start(self) -> None:
        (self.engine or self.batcher).start()

    def stop(self) -> None:
        (self.engine or self.batcher).stop()


class GuardMiddleware:
    """Pure ASGI, around everything: API key (401, constant-time, on /v1 and /metrics), body size (413,
    also for chunked bodies without Content-Length), any unhandled exception (500 as an OpenAI error
    object, never a plain-text page), and the request counter by endpoint and status."""

    def __init__(self, app, api_key: str, max_body_bytes: int, metrics: Metrics):
        self.app, self.api_key, self.max_body, self.metrics = app, api_key.encode(), max_body_bytes, metrics

    def _authorized(self, headers: dict[str, str]) -> bool:
        given = headers.get("authorization", "").encode("latin-1")
        return hmac.compare_digest(given, b"Bearer " + self.api_key)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        state = {"status": 500, "started": False, "too_large": False}

        async def send_counted(message):
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
            await send(message)

        async def reply(response: JSONResponse):
            await response(scope, receive, send_counted)
            self.metrics.request(endpoint, state["status"])

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_key and (path.startswith("/v1/") or path == "/metrics") and not self._authorized(headers):
            return await reply(error_response(401, "missing or wrong API key (send Authorization: Bearer KEY)",
                                              "authentication_error", code="invalid_api_key"))
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await reply(self._too_large(f"request body is {length} bytes"))
        received = {"bytes": 0}

        async def receive_limited():
            message = await receive()
            if message["type"] == "http.request":
                received["bytes"] += len(message.get("body", b""))
                if received["bytes"] > self.max_body:
                    state["too_large"] = True
                    raise _TooLarge
            return message

        async def send_app(message):
            if state["too_large"]:
                return  # the app's answer to a body it could not read (FastAPI makes it a 400): ours is 413
            await send_counted(message)

        try:
            await self.app(scope, receive_limited, send_app)
        except Exception:  # noqa: BLE001 -- one request's failure is that request's 500, counted
            if not state["too_large"]:
                log.exception("unhandled error in %s %s", scope.get("method"), path)
                if not state["started"]:
                    return await reply(error_response(500, "internal server error (logged on the server)",
                                                      "server_error", code="internal_error"))
                raise
        if state["too_large"] and not state["started"]:
            return await reply(self._too_large("request body"))
        self.metrics.request(endpoint, state["status"])

    def _too_large(self, what: str) -> JSONResponse:
        return error_response(413, f"{what} exceeds this server's limit of {self.max_body} bytes "
                                   "(--max-body-bytes)", code="body_too_large")


class _TooLarge(Exception):
    pass


# The error statuses each kind of route really sends (documented in the OpenAPI schema).
_ERRORS = {400: "invalid request (an OpenAI error object names the parameter)",
           401: "missing or wrong API key (only when the server has one)",
           404: "unknown model", 413: "request body over --max-body-bytes",
           429: "transient overload: the queue is full; retry after Retry-After seconds",
           500: "the request failed on the server", 503: "the server's worker has died; it is exiting"}


def _responses(*statuses: int) -> dict:
    return {status: {"model": ErrorResponse, "description": _ERRORS[status]} for status in statuses}


POST_ERRORS = _responses(400, 401, 404, 413, 429, 500, 503)


def build_app(state: ServerState, args: ServeArgs) -> FastAPI:
    """The FastAPI app with every endpoint; `state` holds the running engine."""
    app = FastAPI(title="danlu serve", docs_url=None, redoc_url=None)
    add_error_handlers(app)

    def check_model(name: str, endpoint_kinds: tuple[str, ...], endpoint: str) -> None:
        if name not in state.aliases:
            raise ApiError(404, f"the model {name!r} does not exist; this server serves {state.name!r}",
                           param="model", code="model_not_found")
        if state.kind not in endpoint_kinds:
            raise ApiError(400, f"{endpoint} needs a {' or '.join(endpoint_kinds)} model; "
                                f"{state.name!r} is a {state.kind}", param="model")

    @app.get("/v1/models", responses=_responses(401, 500))
    async def models():
        return {"object": "list", "data": [{"id": state.name, "object": "model", "created": state.created,
                                            "owned_by": "danlu", "max_model_len": state.max_model_len,
                                            "kind": state.kind}]}

    @app.get("/health", responses={503: {"description": _ERRORS[503]}})
    async def health():
        worker = state.engine or state.batcher
        if worker.failure is not None:
            return JSONResponse({"status": "dead", "model": state.name, "error": worker.failure}, status_code=503)
        return {"status": "ok", "model": state.name, "kind": state.kind, **state.stats()}

    @app.get("/metrics", response_class=PlainTextResponse, responses=_responses(401, 500))
    async def metrics():
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/v1/completions", responses=POST_ERRORS)
    async def completions(req: CompletionRequest, request: Request):
        check_model(req.model, ("decoder",), "/v1/completions")
        if req.echo:
            raise ApiError(400, "echo is not supported", param="echo")
        gen = state.generator
        # tokenizing a large request takes seconds: off the event loop, so /health and streams keep flowing
        prompts = await asyncio.to_thread(gen.completion_prompts, req)
        max_tokens = gen.check_lengths(prompts, req.max_tokens, 16)
        params = sampling_params(req, max_tokens, req.logprobs)
        return await gen.run(request, prompts, req.n, params, req.stream,
                             bool(req.stream_options and req.stream_options.include_usage), False,
                             req.return_token_ids)

    @app.post("/v1/chat/completions", responses=POST_ERRORS)
    async def chat(req: ChatCompletionRequest, request: Request):
        check_model(req.model, ("decoder",), "/v1/chat/completions")
        gen = state.generator
        state.engine.check_fits(req.n)
        prompt = await asyncio.to_thread(gen.chat_prompt, req)
        max_tokens = gen.check_lengths([prompt], req.max_completion_tokens or req.max_tokens, None)
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        params = sampling_params(req, max_tokens, logprobs)
        return await gen.run(request, [prompt], req.n, params, req.stream,
                             bool(req.stream_options and req.stream_options.include_usage), True,
                             req.return_token_ids)

    @app.post("/v1/embeddings", responses=POST_ERRORS)
    async def embeddings(req: EmbeddingRequest):
        check_model(req.model, ("embedder",), "/v1/embeddings")
        texts = [req.input] if isinstance(req.input, str) else req.input
        vectors, counts = await state.batcher.submit(texts)
        if req.encoding_format == "base64":
            import base64

            import numpy as np

            vectors = [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() for v in vectors]
        tokens = int(sum(counts))
        return {"object": "list", "model": state.name,
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    if state.task is not None:
        task = state.task

        @app.post(task.ROUTE, responses=POST_ERRORS)
        async def task_route(req: TaskRequest):
            check_model(req.model, (state.kind,), task.ROUTE)
            try:
                inputs = task.validate_request(req.input)
            except ValueError as e:
                raise ApiError(400, f"input: {e}", param="input") from None
            results, counts = await state.batcher.submit(inputs)
            tokens = int(sum(counts))
            return {"object": "list", "model": state.name,
                    "data": [{"index": i, **r} for i, r in enumerate(results)],
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    app.openapi = lambda: openapi_schema(app)
    return app


def build_state(args: ServeArgs) -> ServerState:
    """Load the model named by `args` and build its engine (not yet started)."""
    from danlu.assets import resolve_model
    from danlu.runtime import task_of
    from danlu.serve.loading import choose_device, choose_dtype, load_decoder, load_embedder

    path = resolve_model(args.model)
    device = choose_device(args.device)
    dtype = choose_dtype(args.dtype, device)
    task_name = task_of(path)
    kind = "decoder" if task_name in DECODER_TASKS else "embedder" if task_name in ("embed", "mlm") else "task"
    if args.quantize != "none" and kind != "decoder":
        raise DanluError(f"--quantize {args.quantize} applies to decoders, and {path} is an encoder ({task_name})")
    if args.quantize != "none":
        dtype = torch.float32 if args.dtype == "auto" else dtype
    name = args.served_model_name or (args.model if not Path(args.model).expanduser().is_dir() else path.name)
    metrics = Metrics(name)
    aliases = {name, args.model, str(path)}
    if kind == "decoder":
        model, tokenizer = load_decoder(path, dtype, device, args.quantize)
        limit = getattr(model.config.get_text_config(), "max_position_embeddings", None) or 2048
        max_model_len = args.max_model_len or min(limit, 2048)
        engine = DecoderEngine(model, tokenizer, max_batch_size=args.max_batch_size, max_queue=args.max_queue,
                               max_model_len=max_model_len, prefill_chunk=args.prefill_chunk, metrics=metrics)
        generator = Generator(engine, tokenizer, name, max_model_len, args.max_tokens_limit)
        state = ServerState(name, aliases, kind, metrics, max_model_len, engine=engine, generator=generator)
    else:
        from danlu.serve.encoder import MicroBatcher, embedder_runner, task_runner

        task = None
        if kind == "task":
            from danlu.runtime import load
            from danlu.tasks import get_task

            task = get_task(task_name)
            if not task.ROUTE:
                raise DanluError(f"{path} is a {task_name!r} model, which danlu serve has no route for")
            loaded = load(path, device=str(device))
            if dtype != torch.float32 and isinstance(loaded.model, torch.nn.Module):
                loaded.model.to(dtype)
            kind = getattr(task, "KIND", task.NAME)
            run, max_model_len = task_runner(task, loaded), loaded.max_length
        else:
            model, tokenizer = load_embedder(path, dtype, device)
            max_model_len = args.max_model_len or min(getattr(model.config, "max_position_embeddings", 512), 512)
            run = embedder_runner(model, tokenizer, max_model_len)
        batcher = MicroBatcher(run, args.max_batch_size, args.batch_wait_ms, args.max_queue, metrics)
        state = ServerState(name, aliases, kind, metrics, max_model_len, batcher=batcher, task=task)
    state.created = int(time.time())
    weights = "int8 weights, " if args.quantize == "int8" else ""
    print(f"danlu serve: {name} ({kind}, {weights}{str(dtype).removeprefix('torch.')}, {device}, "
          f"{torch.get_num_threads()} threads) from {path}", file=sys.stderr, flush=True)
    return state


API_KEY_ENV = "DANLU_API_KEY"


def api_key(args: ServeArgs) -> str:
    """The key clients must send: --api-key, else --api-key-file's first line, else $DANLU_API_KEY."""
    if args.api_key:
        return args.api_key
    if args.api_key_file:
        path = Path(args.api_key_file).expanduser()
        try:
            key = (path.read_text(encoding="utf-8").splitlines() or [""])[0].strip()
        except OSError as e:
            raise DanluError(f"--api-key-file {path}: cannot read it ({e.strerror})") from None
        if not key:
            raise DanluError(f"--api-key-file {path} is empty")
        return key
    return os.environ.get(API_KEY_ENV, "").strip()


class WorkerDied(DanluError):
    """The engine or micro-batcher thread died: the server stopped so that a supervisor restarts it."""

    exit_code = 1


def serve(args: ServeArgs) -> None:
    """Serve the model until SIGTERM/SIGINT; then finish the requests in flight and return (exit 0).
    Should the worker thread die, /health answers 503 and the process exits 1."""
    import uvicorn

    from danlu.hardware import set_threads

    set_threads(args.threads)
    key = api_key(args)
    state = build_state(args)
    app = build_app(state, args)
    app.add_middleware(GuardMiddleware, api_key=key, max_body_bytes=args.max_body_bytes, metrics=state.metrics)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=None, lifespan="off")
    server = uvicorn.Server(config)
    worker = state.engine or state.batcher

    def stop_serving(reason: str) -> None:  # on the dead worker's thread; uvicorn polls should_exit
        print(f"danlu serve: {reason}; stopping", file=sys.stderr, flush=True)
        time.sleep(1.0)  # /health says 503 meanwhile, so that a load balancer sees why before the port closes
        server.should_exit = True

    worker.on_failure = stop_serving
    state.start()
    # uvicorn re-raises the signal after its graceful shutdown, with the handlers it found installed:
    # these make that a no-op, so a drained server exits 0 instead of dying by the signal.
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, lambda *_: None)
    print(f"danlu serve: listening on http://{args.host}:{args.port} (OpenAI API under /v1)",
          file=sys.stderr, flush=True)
    try:
        server.run()
    finally:
        state.stop()
    if worker.failure is not None:
        raise WorkerDied(f"{worker.failure} (exit 1 so that a supervisor restarts the server)")
    print("danlu serve: drained and stopped", file=sys.stderr, flush=True)
