"""`danlu serve`: the HTTP app (FastAPI + uvicorn) around a decoder engine or an encoder micro-batcher."""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from danlu.errors import DanluError
from danlu.runtime.heads import DECODER_TASKS
from danlu.serve.args import ServeArgs
from danlu.serve.engine import DecoderEngine, QueueFull
from danlu.serve.generation import ApiError, Generator, sampling_params
from danlu.serve.metrics import Metrics
from danlu.serve.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, TaskRequest

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


def error_body(status: int, message: str, type_: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code or status}}


def error_response(status: int, message: str, type_: str = "invalid_request_error", param=None, code=None,
                   headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, type_, param, code), status_code=status, headers=headers)


class _TooLarge(Exception):
    pass


class GuardMiddleware:
    """Pure ASGI: API key (401), body size (413, also for bodies without Content-Length), and the
    request counter by endpoint and status."""

    def __init__(self, app, api_key: str, max_body_bytes: int, metrics: Metrics):
        self.app, self.api_key, self.max_body, self.metrics = app, api_key, max_body_bytes, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        status = {"code": 500}

        async def send_counted(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        async def reply(response: JSONResponse):
            await response(scope, receive, send_counted)
            self.metrics.request(endpoint, status["code"])

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_key and path.startswith("/v1/"):
            if headers.get("authorization", "") != f"Bearer {self.api_key}":
                return await reply(error_response(401, "missing or wrong API key (send Authorization: Bearer KEY)",
                                                  "authentication_error", code="invalid_api_key"))
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await reply(error_response(413, f"request body is {length} bytes; this server accepts at "
                                                   f"most {self.max_body} (--max-body-bytes)", code="body_too_large"))
        received = {"bytes": 0}

        async def receive_limited():
            message = await receive()
            if message["type"] == "http.request":
                received["bytes"] += len(message.get("body", b""))
                if received["bytes"] > self.max_body:
                    raise _TooLarge
            return message

        started = {"yes": False}

        async def send_tracked(message):
            if message["type"] == "http.response.start":
                started["yes"] = True
            await send_counted(message)

        try:
            await self.app(scope, receive_limited, send_tracked)
        except _TooLarge:
            if not started["yes"]:
                return await reply(error_response(413, f"request body exceeds {self.max_body} bytes "
                                                       "(--max-body-bytes)", code="body_too_large"))
        self.metrics.request(endpoint, status["code"])


def build_app(state: ServerState, args: ServeArgs) -> FastAPI:
    """The FastAPI app with every endpoint; `state` holds the running engine."""
    app = FastAPI(title="danlu serve", docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return error_response(e.status, e.message, e.type, e.param, e.code, e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        first = e.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", []) if x != "body")
        if first.get("type") == "json_invalid":
            return error_response(400, f"request body is not valid JSON: {first.get('msg')}", code="invalid_json")
        return error_response(400, f"{where or 'body'}: {first.get('msg')}", param=where or None)

    @app.exception_handler(QueueFull)
    async def full(request: Request, e: QueueFull):
        return error_response(429, "the server's queue is full; retry shortly", "rate_limit_error",
                              code="queue_full", headers={"Retry-After": "1"})

    def check_model(name: str, endpoint_kinds: tuple[str, ...], endpoint: str) -> None:
        if name not in state.aliases:
            raise ApiError(404, f"the model {name!r} does not exist; this server serves {state.name!r}",
                           param="model", code="model_not_found")
        if state.kind not in endpoint_kinds:
            raise ApiError(400, f"{endpoint} needs a {' or '.join(endpoint_kinds)} model; "
                                f"{state.name!r} is a {state.kind}", param="model")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": state.name, "object": "model", "created": state.created,
                                            "owned_by": "danlu", "max_model_len": state.max_model_len,
                                            "kind": state.kind}]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": state.name, "kind": state.kind, **state.stats()}

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        check_model(req.model, ("decoder",), "/v1/completions")
        if req.echo:
            raise ApiError(400, "echo is not supported", param="echo")
        gen = state.generator
        prompts = gen.completion_prompts(req)
        max_tokens = gen.check_lengths(prompts, req.max_tokens, 16)
        params = sampling_params(req, max_tokens, req.logprobs)
        return await gen.run(request, prompts, req.n, params, req.stream,
                             bool(req.stream_options and req.stream_options.include_usage), False,
                             req.return_token_ids)

    @app.post("/v1/chat/completions")
    async def chat(req: ChatCompletionRequest, request: Request):
        check_model(req.model, ("decoder",), "/v1/chat/completions")
        gen = state.generator
        prompt = gen.chat_prompt(req)
        max_tokens = gen.check_lengths([prompt], req.max_completion_tokens or req.max_tokens, None)
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        params = sampling_params(req, max_tokens, logprobs)
        return await gen.run(request, [prompt], req.n, params, req.stream,
                             bool(req.stream_options and req.stream_options.include_usage), True,
                             req.return_token_ids)

    @app.post("/v1/embeddings")
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

        @app.post(task.ROUTE)
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


def serve(args: ServeArgs) -> None:
    """Serve the model until SIGTERM/SIGINT; then finish the requests in flight and return (exit 0)."""
    import uvicorn

    if args.threads:
        torch.set_num_threads(args.threads)
    state = build_state(args)
    app = build_app(state, args)
    app.add_middleware(GuardMiddleware, api_key=args.api_key, max_body_bytes=args.max_body_bytes,
                       metrics=state.metrics)
    state.start()
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=None, lifespan="off")
    server = uvicorn.Server(config)
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
    print("danlu serve: drained and stopped", file=sys.stderr, flush=True)
