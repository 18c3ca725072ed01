"""Waiting for a request's tokens and answering: one JSON body, or a stream of server-sent events.

Both wait on the request's queue (``HttpSource`` fills it from the frontend's thread) under the
request's deadline (``server.request_timeout_s`` from its arrival: past it the request is aborted
everywhere and the answer is 504). A client that disconnects aborts its request: while the answer
has not started, a task listening on the connection notices; once a stream runs, Starlette cancels
it and the stream's ``finally`` aborts the request. A stream sends its headers only with the first
tokens, so a request that fails before any token (bad media, a prompt over the context) gets its
own status code, as an unstreamed one does.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from epd.metrics import RequestRecord
from epd.server.errors import DISCONNECTED, TIMED_OUT, ApiError, error_of_record, error_response
from epd.server.responses import DONE, Reply, error_event
from epd.server.source import RequestHandle
from epd.server.stream import TextStream

CLIENT_GONE = 499  # nginx's "client closed request": nobody reads it, the access log does
Update = tuple[list[int], RequestRecord | None]


class ClientGone(Exception):
    """The client disconnected before its answer started."""


async def full_response(state, request: Request, handle: RequestHandle, reply: Reply) -> Response:
    """The whole answer at once, when the request has finished."""
    watcher = asyncio.ensure_future(_disconnect(request))
    try:
        record = None
        while record is None:
            _, record = await next_update(state, handle, watcher)
    except ClientGone:
        return Response(status_code=CLIENT_GONE)
    except ApiError as exc:
        return error_response(exc)
    finally:
        watcher.cancel()
    if record.error is not None:
        return error_response(error_of_record(record.error, record.num_output_tokens, state.cfg.retry_after_s))
    return Response(reply.body(record), media_type="application/json")


async def stream_response(state, request: Request, handle: RequestHandle, reply: Reply) -> Response:
    """Server-sent events from the first tokens on (an error before them is an ordinary error answer)."""
    watcher = asyncio.ensure_future(_disconnect(request))
    try:
        first = await next_update(state, handle, watcher)
    except ClientGone:
        return Response(status_code=CLIENT_GONE)
    except ApiError as exc:
        return error_response(exc)
    finally:
        watcher.cancel()
    record = first[1]
    if record is not None and record.error is not None:
        return error_response(error_of_record(record.error, record.num_output_tokens, state.cfg.retry_after_s))
    events = _events(state, handle, reply, TextStream(state.decode, handle.req.stop), first)
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _events(state, handle: RequestHandle, reply: Reply, text: TextStream, update: Update):
    ended = False  # the request ended (or was aborted here): nothing to abort on the way out
    try:
        first = True
        while True:
            tokens, record = update
            if record is None:
                yield reply.chunk(text.add(tokens), tokens, first=first)
            elif record.error is not None:  # failed after its first tokens (a lost rank, the drain deadline)
                ended = True
                yield error_event(record.error, error_of_record(record.error, 1, 1).status, "server_error")
                yield DONE
                return
            else:
                ended = True
                if first:
                    yield reply.chunk("", [], first=True)
                yield reply.chunk(text.finish(record.output_text), tokens, finish_reason=record.finish_reason)
                if reply.include_usage:
                    yield reply.usage_chunk(record)
                yield DONE
                return
            first = False
            try:
                update = await next_update(state, handle, None)
            except ApiError as exc:  # its deadline passed: aborted already
                ended = True
                yield error_event(exc.message, exc.status, "timeout")
                yield DONE
                return
    finally:
        if not ended and handle.record is None:
            state.source.cancel(handle.id, DISCONNECTED)


async def next_update(state, handle: RequestHandle, watcher: asyncio.Future | None) -> Update:
    """The request's next update; ``ClientGone`` when ``watcher`` saw the client leave, 504 at the
    deadline (either way the request is aborted everywhere)."""
    timeout_s = state.cfg.request_timeout_s
    remaining = handle.arrival + timeout_s - time.time()
    if not handle.queue.empty():
        return handle.queue.get_nowait()
    getter = asyncio.ensure_future(handle.queue.get())
    waits = {getter} if watcher is None else {getter, watcher}
    done, _ = await asyncio.wait(waits, timeout=max(0.0, remaining), return_when=asyncio.FIRST_COMPLETED)
    if getter in done:
        return getter.result()
    getter.cancel()
    if watcher is not None and watcher in done:
        state.source.cancel(handle.id, DISCONNECTED)
        raise ClientGone
    state.source.cancel(handle.id, TIMED_OUT.format(timeout_s))
    raise ApiError(504, f"not finished within server.request_timeout_s={timeout_s:g} s", code="timeout")


async def _disconnect(request: Request) -> None:
    """Returns when the client has disconnected (the body was read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
