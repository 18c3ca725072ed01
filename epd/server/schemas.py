"""OpenAI request bodies, checked with pydantic, and their conversion to the frontend's ``WorkloadRequest``.

Types are strict (``"5"`` is no integer, ``true`` no number) and a failure becomes a 400 that names
the field (``param``). Fields OpenAI defines that epd does not implement are refused unless they hold
their neutral value (``logprobs: false``, ``presence_penalty: 0`` ...); fields nobody defines are
ignored, as OpenAI-compatible servers do. ``top_k``, ``ignore_eos`` and ``return_token_ids`` are the
extras (the SDK's ``extra_body``), as in vLLM.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from epd.server.errors import ApiError
from epd.workload import WorkloadRequest

Prob = Annotated[float, Field(ge=0.0, le=1.0)]
NEUTRAL = {
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "response_format": (None, {"type": "text"}),
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
}
"""Fields epd does not implement, and the values that ask for nothing (accepted)."""


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool = False


class Message(BaseModel):
    """One chat message; its content parts are checked by ``epd.frontend.chat`` (the frontend's rules)."""

    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]]


class Sampling(BaseModel):
    """What chat and text completions share."""

    model_config = ConfigDict(strict=True, extra="allow")
    model: str
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0)] | None = None
    top_p: Prob | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    return_token_ids: bool = False

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def check_supported(self) -> None:
        """400 for ``n`` other than 1 and for an unimplemented field that asks for something."""
        if self.n not in (None, 1):
            raise ApiError(400, f"n={self.n}: epd returns one choice per request; set n=1 or leave it out", "n")
        extra = self.model_extra or {}
        for key, neutral in NEUTRAL.items():
            if key in extra and extra[key] not in neutral:
                raise ApiError(400, f"{key}={extra[key]!r} is not supported by epd; leave it out", key)

    def sampling(self, max_tokens: int) -> dict[str, Any]:
        """The ``WorkloadRequest`` fields of the sampling parameters (OpenAI's defaults where unset)."""
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return {
            "max_tokens": max_tokens,
            "temperature": 1.0 if self.temperature is None else self.temperature,
            "top_p": 1.0 if self.top_p is None else self.top_p,
            "top_k": max(0, self.top_k or 0),  # vLLM's -1 and 0 both mean no top-k
            "seed": self.seed,
            "stop": stop,
            "ignore_eos": self.ignore_eos,
        }


class ChatRequest(Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None

    def to_request(self, default_max_tokens: int) -> WorkloadRequest:
        max_tokens = self.max_completion_tokens or self.max_tokens or default_max_tokens
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.content} for m in self.messages
        ]
        return WorkloadRequest(id=f"chatcmpl-{uuid.uuid4().hex}", messages=messages, **self.sampling(max_tokens))


class CompletionRequest(Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]

    def to_request(self, default_max_tokens: int) -> WorkloadRequest:
        prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        max_tokens = self.max_tokens or default_max_tokens
        return WorkloadRequest(id=f"cmpl-{uuid.uuid4().hex}", messages=[], prompt=prompt, **self.sampling(max_tokens))


def parse_body(model: type[Sampling], body: bytes) -> Sampling:
    """``body`` (JSON) as ``model``; a 400 naming the first field that is wrong."""
    try:
        parsed = model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            raise ApiError(400, f"the body is not valid JSON: {first['msg']}", code="invalid_json") from None
        param = _field_path(first["loc"])
        raise ApiError(400, f"{param or 'body'}: {first['msg']}", param=param) from None
    parsed.check_supported()
    return parsed


def _field_path(loc: tuple) -> str | None:
    """``("messages", 0, "content", "str")`` → ``messages.0.content`` (pydantic's union branches dropped)."""
    parts = [str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p in _TYPE_TAGS))]
    return ".".join(parts) or None


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "function-after", "nullable"}
