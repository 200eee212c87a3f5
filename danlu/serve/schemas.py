"""Request bodies of the OpenAI-compatible API (pydantic: a wrong type is a 400 that names the field)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_N = 16
MAX_TOP_LOGPROBS = 20
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # what torch.Generator.manual_seed takes, with room for seed + n


def invalid_unicode_at(value: Any, where: str = "") -> str | None:
    """The path of the first string in `value` that is not valid Unicode (a lone surrogate, which JSON's
    \\uXXXX escapes can carry), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where or "body"
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            found = invalid_unicode_at(getattr(value, name), f"{where}.{name}" if where else name)
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = invalid_unicode_at(item, f"{where}[{i}]")
            if found:
                return found
    elif isinstance(value, dict):
        for key, item in value.items():
            found = invalid_unicode_at(key, where) or invalid_unicode_at(item, f"{where}.{key}")
            if found:
                return found
    return None


class _Request(BaseModel):
    """Base of every request body: unknown fields ignored, invalid Unicode refused (400) before any work."""

    model_config = ConfigDict(extra="ignore")  # fields of newer OpenAI clients we do not use

    @model_validator(mode="after")
    def _valid_unicode(self):
        where = invalid_unicode_at(self)
        if where:
            raise ValueError(f"{where} is not valid Unicode (it holds a lone surrogate); send UTF-8 text")
        return self


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    """Every error this server sends: an OpenAI error object."""

    error: ErrorDetail


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(_Request):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="below 1e-5 means greedy (as in vLLM)")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1, description="0 or -1 means off (an extension, as in vLLM)")
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    user: str | None = None
    ignore_eos: bool = False
    return_token_ids: bool = Field(False, description="add the generated token ids to each choice (extension)")

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int]
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)


class EmbeddingRequest(_Request):
    model: str
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


class TaskRequest(_Request):
    """The request of a task route (/v1/ner, /v1/qa): `input` is checked by the task's validate_request."""

    model: str
    input: str | list[str] | list[dict[str, str]] | dict[str, str]
