"""``HttpSource``: HTTP requests as a request source of the frontend, across two threads.

The HTTP server runs an asyncio loop in a thread of its own; the frontend's loop stays in the main
thread. Requests go from the server to the frontend through a deque plus one byte on an inproc ZMQ
socket the frontend's inbox poll also waits on (``Channel.wake_on``), so a request is submitted as
soon as it arrives, not at the next poll. Updates go back the other way: the frontend calls
``on_update`` (new tokens, the end) and each reaches its request's asyncio queue through
``loop.call_soon_threadsafe``. Aborts (a client left, a deadline passed) come back through
``cancelled``. The frontend does everything else — tokenization, routing, records — as for a workload.

Ownership: ``submit`` and ``cancel`` run in the server's thread only (the wake socket is its own),
``due``, ``cancelled`` and ``on_update`` in the frontend's only; the deques and the dict of handles
are each appended on one side and popped on the other (atomic under the GIL).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections import deque
from collections.abc import Callable

import zmq

from epd.frontend.source import RequestSource
from epd.metrics import RequestRecord
from epd.workload import WorkloadRequest

_ADDRESSES = itertools.count()


class RequestHandle:
    """One HTTP request's end of the bridge; its updates arrive on ``queue`` (in the server's loop) as
    ``(new token ids, final record or None)``."""

    def __init__(self, req: WorkloadRequest, arrival: float, stream: bool = True) -> None:
        self.req = req
        self.arrival = arrival
        self.stream = stream  # False: only the final update is delivered
        self.queue: asyncio.Queue[tuple[list[int], RequestRecord | None]] = asyncio.Queue()
        self.record: RequestRecord | None = None  # set once finished

    @property
    def id(self) -> str:
        return self.req.id


class HttpSource(RequestSource):
    """Requests the HTTP server accepted, until ``drain`` (then ``done`` once none is left to submit)."""

    def __init__(self, ctx: zmq.Context) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None  # the server's, set when it starts
        self.on_finished: Callable[[RequestHandle], None] = lambda handle: None  # in the server's loop
        self.ready = False  # every rank is up: requests are taken
        self.draining = False
        self.drain_deadline = math.inf
        self.drain_error = "aborted: the server is shutting down"
        self.served: list[WorkloadRequest] = []  # every request submitted (their records are the results)
        self._incoming: deque[RequestHandle] = deque()
        self._cancels: deque[tuple[str, str]] = deque()
        self._handles: dict[str, RequestHandle] = {}  # submitted by the server, not finished yet
        address = f"inproc://epd-http-{next(_ADDRESSES)}"
        self.wake_socket = ctx.socket(zmq.PULL)  # the frontend's: registered with Channel.wake_on
        self.wake_socket.bind(address)
        self._wake_tx = ctx.socket(zmq.PUSH)  # the server thread's
        self._wake_tx.setsockopt(zmq.LINGER, 0)
        self._wake_tx.connect(address)
        self._sender_closed = False

    # ---- the server's thread --------------------------------------------------------------------

    def submit(self, handle: RequestHandle) -> None:
        self._handles[handle.id] = handle
        self._incoming.append(handle)
        self._wake()

    def cancel(self, request_id: str, error: str) -> None:
        """Abort ``request_id`` everywhere (its final update still comes, with ``error``)."""
        self._cancels.append((request_id, error))
        self._wake()

    def _wake(self) -> None:
        if self._sender_closed:
            return
        with contextlib.suppress(zmq.Again):  # the frontend has many wake-ups queued already
            self._wake_tx.send(b"", zmq.NOBLOCK)

    def _deliver(self, handle: RequestHandle, new_tokens: list[int], record: RequestRecord | None) -> None:
        if record is not None:
            handle.record = record
            self.on_finished(handle)
        handle.queue.put_nowait((new_tokens, record))

    # ---- the frontend's thread ------------------------------------------------------------------

    def due(self, now: float, in_flight: int) -> list[tuple[WorkloadRequest, float]]:
        while True:  # every wake-up byte: the poll must not find the socket readable again
            try:
                self.wake_socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        out = []
        while self._incoming:
            handle = self._incoming.popleft()
            self.served.append(handle.req)
            out.append((handle.req, handle.arrival))
        return out

    def cancelled(self, now: float) -> list[tuple[str, str]]:
        out = []
        while self._cancels:
            out.append(self._cancels.popleft())
        if self.draining and now > self.drain_deadline:
            out += [(request_id, self.drain_error) for request_id in list(self._handles)]
        return out

    @property
    def done(self) -> bool:
        return self.draining and not self._incoming

    def on_update(self, record: RequestRecord, new_tokens: list[int], finished: bool) -> None:
        handle = self._handles.pop(record.id, None) if finished else self._handles.get(record.id)
        if handle is None or self.loop is None or not (finished or handle.stream):
            return
        if finished:
            handle.req.messages = []  # its media (data: URIs) need not live as long as its record
        self.loop.call_soon_threadsafe(self._deliver, handle, list(new_tokens), record if finished else None)

    def drain(self, timeout_s: float, error: str) -> None:
        """Take no new request; abort those still in flight with ``error`` after ``timeout_s``."""
        if not self.draining:
            self.draining = True
            self.drain_deadline = time.time() + timeout_s
            self.drain_error = error

    def unsent(self) -> list[WorkloadRequest]:
        return [handle.req for handle in self._incoming]

    def fail_unsent(self, error: str) -> None:
        """End the requests never submitted (the job stopped first): their clients get ``error``."""
        while self._incoming:
            handle = self._incoming.popleft()
            self._handles.pop(handle.id, None)
            record = RequestRecord(id=handle.id, arrival=handle.arrival, error=error, finish_reason="abort")
            if self.loop is not None:
                self.loop.call_soon_threadsafe(self._deliver, handle, [], record)

    def close_sender(self) -> None:
        """Close the server thread's socket (from that thread); later wake-ups are dropped."""
        self._sender_closed = True
        self._wake_tx.close(linger=0)

    def close(self) -> None:
        """Close the frontend's socket (after ``close_sender``)."""
        self.wake_socket.close(linger=0)
