"""Every error the server sends is an OpenAI error object; the OpenAPI document lists what is really sent.

The handlers are registered once for the whole app, so a new route inherits them: a route (or a runner
of the micro-batcher) raises `ApiError`, `BadInput`, `NeverFits`, `QueueFull` or `WorkerDead` and never
builds an error response itself.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from danlu.serve.worker import BadInput, NeverFits, QueueFull, WorkerDead


class ApiError(Exception):
    """An error answered as an OpenAI error object with an HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers


def error_body(status: int, message: str, type_: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code or status}}


def error_response(status: int, message: str, type_: str = "invalid_request_error", param=None, code=None,
                   headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, type_, param, code), status_code=status, headers=headers)


def _validation_message(e: RequestValidationError) -> JSONResponse:
    first = e.errors()[0]
    where = ".".join(str(x) for x in first.get("loc", []) if x != "body")
    if first.get("type") == "json_invalid":
        return error_response(400, f"request body is not valid JSON: {first.get('ctx', {}).get('error', '')}"
                                   .rstrip(": "), code="invalid_json")
    message = str(first.get("msg", "invalid"))
    return error_response(400, f"{where or 'body'}: {message}", param=where or None)


def add_error_handlers(app: FastAPI) -> None:
    """Map every exception a route or runner raises to its OpenAI error object."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return error_response(e.status, e.message, e.type, e.param, e.code, e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        return _validation_message(e)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):  # 404 unknown path, 405, bad body
        names = {404: "not_found", 405: "method_not_allowed"}
        message = {404: f"no such endpoint: {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
        return error_response(e.status_code, message, code=names.get(e.status_code), headers=e.headers)

    @app.exception_handler(BadInput)
    async def bad_input(request: Request, e: BadInput):
        return error_response(400, str(e), param="input")

    @app.exception_handler(NeverFits)
    async def never_fits(request: Request, e: NeverFits):
        return error_response(400, e.message, param=e.param, code="request_too_large")

    @app.exception_handler(QueueFull)
    async def full(request: Request, e: QueueFull):
        return error_response(429, "the server's queue is full; retry shortly", "rate_limit_error",
                              code="queue_full", headers={"Retry-After": "1"})

    @app.exception_handler(WorkerDead)
    async def dead(request: Request, e: WorkerDead):
        return error_response(503, f"{e}; the server is exiting", "server_error", code="worker_dead")


def openapi_schema(app: FastAPI) -> dict:
    """FastAPI's document without the 422 it never sends (validation errors are 400 here)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)
    app.openapi_schema = schema
    return schema
