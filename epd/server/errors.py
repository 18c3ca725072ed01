"""Errors as OpenAI sends them: ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status.

Every status the server answers with besides 200, and when:

    400  malformed JSON, a field of the wrong type or out of range (``param`` names it), a bad or
         refused media part (the message names the part: ``message 0: ...`` / ``media item 1: ...``),
         prompt + max_tokens over the context or the KV cache (with the numbers), ``n`` other than 1
    401  ``server.api_key`` is set and the request has no ``Authorization: Bearer`` key or a wrong one
    404  a ``model`` the server does not serve (``/v1/models`` lists them)
    413  a body over ``server.max_body_bytes``
    500  the engines failed the request (the message says why)
    503  ``server.max_pending`` requests are in the system, the ranks are still warming up, or the
         server is draining; with ``Retry-After``
    504  not finished within ``server.request_timeout_s``; everything it held is freed
"""

from __future__ import annotations

import msgspec
from starlette.responses import Response

DISCONNECTED = "aborted: the client disconnected"
"""The error recorded for a request whose client left before it finished."""
TIMED_OUT = "aborted: deadline: not finished within server.request_timeout_s={:g} s"
DRAINED = "aborted: the server is shutting down (server.drain_timeout_s={:g} s passed)"

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    500: "server_error",
    503: "service_unavailable",
    504: "timeout",
}
OUTCOMES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 413: "too_large", 500: "error"}
OUTCOMES |= {503: "unavailable", 504: "timeout"}
"""The ``outcome`` label of ``epd_requests_total`` for each error status."""


class ApiError(Exception):
    """An HTTP error answered in OpenAI's shape; ``headers`` go out with it (``Retry-After``)."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> bytes:
        error = {"message": self.message, "type": TYPES.get(self.status, "server_error")}
        return msgspec.json.encode({"error": {**error, "param": self.param, "code": self.code}})

    @property
    def outcome(self) -> str:
        return OUTCOMES.get(self.status, "error")


def unavailable(message: str, retry_after_s: int, code: str) -> ApiError:
    return ApiError(503, message, code=code, headers={"Retry-After": str(retry_after_s)})


def error_of_record(error: str, num_tokens: int, retry_after_s: int) -> ApiError:
    """The HTTP error of a request the frontend ended with ``error`` after ``num_tokens`` tokens."""
    message = error.removeprefix("bad request: ")
    if num_tokens == 0 and any(words in message for words in TOO_LONG):  # the frontend's or the engine's check
        return ApiError(400, message, param="messages", code="context_length_exceeded")
    if error.startswith("bad request: "):  # the frontend refused it: a field, a media part
        return ApiError(400, message, param=_param_of(message))
    if error.startswith("aborted: deadline"):
        return ApiError(504, error, code="timeout")
    if error.startswith("aborted: the server is shutting down"):
        return unavailable(error, retry_after_s, "shutting_down")
    if num_tokens == 0 and error.startswith("media item"):  # an encoder could not read or encode it
        return ApiError(400, error, param="messages", code="bad_media")
    return ApiError(500, error, code="engine_error")


TOO_LONG = ("tokens, over the context", "than the KV cache holds")
"""Words of the length checks (``epd.frontend.validate.check_length`` and the language engine's)."""
FIELDS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "ignore_eos", "prompt", "messages")


def _param_of(message: str) -> str | None:
    """The request field a frontend check named first (``max_tokens=0 is out of range`` → max_tokens)."""
    if message.startswith(("media item", "message ")):
        return "messages"
    head = message.split("=", 1)[0].split(" ", 1)[0].split("[", 1)[0]
    return head if head in FIELDS else None


def error_response(exc: ApiError) -> Response:
    return Response(exc.body(), status_code=exc.status, media_type="application/json", headers=exc.headers)
