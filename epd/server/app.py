"""The ASGI app: OpenAI's routes on FastAPI, in front of an ``HttpSource``.

    POST /v1/chat/completions   POST /v1/completions   GET /v1/models   GET /health   GET /metrics

A completion request is read (at most ``server.max_body_bytes``), authenticated, parsed and checked
(``epd.server.schemas``; media parts by the frontend's own rules), admitted (every rank up, not
draining, fewer than ``server.max_pending`` in the system: else 503 at once) and handed to the
source; ``epd.server.respond`` then waits for its tokens and answers. ``/health`` and ``/metrics``
need no key.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import Response

from epd.frontend.chat import to_template_messages
from epd.server.config import ServerConfig
from epd.server.errors import ApiError, error_response, unavailable
from epd.server.metrics import CONTENT_TYPE, ServerMetrics
from epd.server.respond import full_response, stream_response
from epd.server.responses import Reply
from epd.server.schemas import ChatRequest, CompletionRequest, Sampling, parse_body
from epd.server.source import HttpSource, RequestHandle

CONTROL_MARGIN = 64 << 10
"""Bytes of a control message besides a ``data:`` URI it carries (ids, hashes, framing)."""


@dataclass
class ServerState:
    """What the routes share: config, the source, metrics, names; ``pending`` counts requests in the
    system (changed only in the server's thread)."""

    cfg: ServerConfig
    source: HttpSource
    metrics: ServerMetrics
    model_names: list[str]
    decode: Callable[[list[int]], str]
    max_context: Callable[[], int]
    max_message_bytes: int
    pending: int = 0
    created: int = 0


def build_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="epd", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.epd = state

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> Response:
        return error_response(ApiError(500, f"internal error: {type(exc).__name__}: {exc}"))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await complete(state, request, ChatRequest, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await complete(state, request, CompletionRequest, "text")

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        check_key(state, request)
        data = [
            {"id": name, "object": "model", "created": state.created, "owned_by": "epd", "max_model_len": state.max_context()}
            for name in state.model_names
        ]  # fmt: skip
        return json_response({"object": "list", "data": data})

    @app.get("/health")
    async def health() -> Response:
        if state.source.draining:
            return json_response({"status": "draining"}, 503)
        if not state.source.ready:
            return json_response({"status": "starting"}, 503)
        return json_response({"status": "ok"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    return app


async def complete(state: ServerState, request: Request, model: type[Sampling], kind: str) -> Response:
    """One chat or text completion, from the request's bytes to its answer (or its error)."""
    arrival = time.time()
    try:
        check_key(state, request)
        parsed = parse_body(model, await read_body(request, state.cfg.max_body_bytes))
        name = check_model(state, parsed.model)
        default = state.cfg.default_max_tokens if kind == "chat" else 16  # OpenAI's default for completions
        req = parsed.to_request(default)
        if kind == "chat":
            check_parts(req.messages, state.max_message_bytes - CONTROL_MARGIN)
        admit(state)
    except ApiError as exc:
        state.metrics.count(exc.outcome)
        return error_response(exc)
    handle = RequestHandle(req, arrival, stream=parsed.stream)
    state.pending += 1
    state.source.submit(handle)
    reply = Reply(req.id, name, kind, parsed.return_token_ids, parsed.include_usage)
    if parsed.stream:
        return await stream_response(state, request, handle, reply)
    return await full_response(state, request, handle, reply)


def check_key(state: ServerState, request: Request) -> None:
    expected = state.cfg.api_key_sha256
    if expected is None:
        return
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    given = hashlib.sha256(key.strip().encode()).hexdigest()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given, expected):
        raise ApiError(401, "a valid API key is needed: send Authorization: Bearer <key>", code="invalid_api_key")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, or 413 past ``limit`` bytes (the rest is read and dropped so the client sees the answer)."""
    declared = request.headers.get("content-length", "")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > 4 * limit:
            break
    if size > limit or (declared.isdigit() and int(declared) > limit):
        raise ApiError(
            413, f"the body is over server.max_body_bytes={limit} bytes", code="request_too_large"
        )  # fmt: skip
    return b"".join(chunks)


def check_model(state: ServerState, model: str) -> str:
    if model not in state.model_names:
        served = ", ".join(state.model_names)
        raise ApiError(404, f"model {model!r} is not served here; this server serves: {served}", "model", "model_not_found")  # fmt: skip
    return model


def check_parts(messages: list[dict], max_data_uri: int) -> None:
    """The frontend's rules for content parts, at once (400 naming the message or the part), and no
    ``data:`` URI larger than a control message can carry to an encoder."""
    try:
        _, media = to_template_messages(messages)
    except ValueError as exc:
        raise ApiError(400, str(exc), "messages") from None
    for index, ref in enumerate(media):
        if ref.source.startswith("data:") and len(ref.source) > max_data_uri:
            raise ApiError(
                400,
                f"media item {index}: its data: URI has {len(ref.source)} characters, over the {max_data_uri} a "
                "control message carries (raise launch.max_message_bytes, or send a URL)",
                "messages",
            )


def admit(state: ServerState) -> None:
    """503 (with ``Retry-After``) unless the server takes one more request now."""
    retry = state.cfg.retry_after_s
    if state.source.draining:
        raise unavailable("the server is shutting down", retry, "shutting_down")
    if not state.source.ready:
        raise unavailable("the server is starting: its ranks are warming up", retry, "starting")
    if state.pending >= state.cfg.max_pending:
        raise unavailable(
            f"the server holds server.max_pending={state.cfg.max_pending} requests: retry later", retry, "overloaded"
        )


def json_response(payload: dict, status: int = 200) -> Response:
    import msgspec

    return Response(msgspec.json.encode(payload), status_code=status, media_type="application/json")
