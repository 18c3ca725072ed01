"""Striped TCP lanes of the zmq backend: a large transfer is split over several connections to its peer
and every stripe lands in place in the receiver's buffer.

One TCP stream through pyzmq moves ~1.2-2 GB/s: the receiver's I/O thread reads each message into a
fresh allocation (page faults on every byte) and one thread does all the copying. A lane is a plain
TCP connection (Python's ``socket``) with a thread at each end: the sender's thread waits for its
stripe's device-to-host copy and writes it with one ``sendmsg``; the receiver's thread reads the
stripe's header, then the stripe itself with one ``recv_into(MSG_WAITALL)`` straight into the
transfer's buffer (pinned host memory when the receiver is on a GPU), GIL released throughout. The
kernel's copies of several lanes run on several cores.

Wire: every stripe is a fixed header ``magic, src, transfer id, total bytes, offset, length`` with a
tag over it (keyed BLAKE2b with the job secret), then ``length`` bytes; a lane opens with a header of
no bytes (its hello). A receiver cuts (and counts) a connection whose header does not verify, names
no peer, or does not fit ``max_transfer_bytes``, or that sends none within ``AUTH_TIMEOUT_S``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import socket
import struct
import threading
from dataclasses import dataclass, field

import numpy as np
import torch

from epd.protocol.auth import TAG_BYTES, mac
from epd.transfer.base import aligned_offsets

log = logging.getLogger("epd.transfer")

HEADER = struct.Struct("<4sIQQQQ")  # magic, src, transfer id, total, offset, length
MAGIC = b"EPL1"
AUTH_TIMEOUT_S = 10.0  # a connection that sends no valid header by then is closed
MAX_IOV = 512  # buffers per sendmsg call


def stripe_header(secret: bytes | None, src: int, transfer_id: int, total: int, offset: int, length: int) -> bytes:
    """The bytes that precede a stripe: its fields and their tag."""
    head = HEADER.pack(MAGIC, src, transfer_id, total, offset, length)
    return head + (mac(secret, b"zmq-lane", head) if secret is not None else bytes(TAG_BYTES))


def split_stripes(total: int, num_lanes: int, min_stripe: int, align: int = 64) -> list[tuple[int, int]]:
    """(offset, length) of the stripes ``total`` bytes go as: one per lane, none under ``min_stripe``."""
    count = max(1, min(num_lanes, total // max(min_stripe, 1)))
    step = -(-total // count // align) * align if count > 1 else total
    return [(lo, min(step, total - lo)) for lo in range(0, total, step)] if total else [(0, 0)]


@dataclass
class Outgoing:
    """One transfer on its way: the buffers its stripes read, until every stripe is written."""

    stripes_left: int
    keepalive: list = field(default_factory=list)  # tensors and pinned buffers the stripes read
    failed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def stripe_done(self, ok: bool) -> None:
        with self._lock:
            self.stripes_left -= 1
            self.failed |= not ok
            if self.stripes_left == 0:
                self.keepalive.clear()


@dataclass
class Stripe:
    header: bytes
    parts: list[np.ndarray]  # uint8 arrays written back to back after the header
    ready: torch.cuda.Event | None  # the device-to-host copy the parts wait for
    job: Outgoing


class Lane:
    """One connection to a peer and the thread that writes its stripes, in the order they come."""

    def __init__(self, address: tuple[str, int], hello: bytes, name: str) -> None:
        self.sock = socket.create_connection(address, timeout=AUTH_TIMEOUT_S)
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(hello)  # a stripe of no bytes: the receiver keeps the connection
        self.queue: queue.SimpleQueue[Stripe | None] = queue.SimpleQueue()
        self.broken: OSError | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (stripe := self.queue.get()) is not None:
            if self.broken is None:
                try:
                    if stripe.ready is not None:
                        stripe.ready.synchronize()  # GIL released while it waits
                    _send_all(self.sock, [stripe.header, *stripe.parts])
                except OSError as exc:
                    self.broken = exc
                    log.warning("zmq lane %s: connection lost (%s); its transfers will time out", self.thread.name, exc)
            stripe.job.stripe_done(self.broken is None)

    def close(self, linger_s: float | None) -> None:
        """Let queued stripes go for up to ``linger_s`` (None: until sent), then cut the connection."""
        self.queue.put(None)
        self.thread.join(linger_s)
        if self.thread.is_alive():
            self.broken = self.broken or OSError("closed")
            shutdown(self.sock)
            self.thread.join()
        self.sock.close()


def _send_all(sock: socket.socket, buffers: list) -> None:
    views = [memoryview(b).cast("B") for b in buffers if len(b)]
    while views:
        sent = sock.sendmsg(views[:MAX_IOV])  # a KV transfer may have more pieces than IOV_MAX (1024)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if sent:
            views[0] = views[0][sent:]


def shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # not connected any more
        sock.shutdown(socket.SHUT_RDWR)


class StripedSender:
    """Packs a transfer (64-byte aligned, as ``aligned_offsets``) into stripes on lanes; device tensors are
    copied to pinned memory stripe by stripe on a side stream, each lane sending its stripe once its copy
    is done."""

    def __init__(self, src: int, secret: bytes | None, min_stripe: int) -> None:
        self.src = src
        self.secret = secret
        self.min_stripe = min_stripe
        self._next_lane = itertools.count()
        self._d2h_stream: torch.cuda.Stream | None = None

    def send(self, lanes: list[Lane], transfer_id: int, data: list[torch.Tensor]) -> Outgoing:
        """Queue ``data`` (each [nbytes] uint8, on the host or a GPU) on ``lanes`` as transfer ``transfer_id``."""
        offsets, total = aligned_offsets([d.numel() for d in data])
        stripes = split_stripes(total, len(lanes), self.min_stripe)
        job = Outgoing(stripes_left=len(stripes), keepalive=list(data))
        events: list[torch.cuda.Event | None] = [None] * len(stripes)
        if any(d.is_cuda for d in data):
            host = torch.empty(total, dtype=torch.uint8, pin_memory=True)  # [total], the packed layout
            events = self._stage(data, offsets, host, stripes)
            job.keepalive.append(host)
            sources = [(0, host.numpy())]
        else:
            sources = [(off, d.numpy()) for off, d in zip(offsets, data, strict=True)]
        first = next(self._next_lane)  # single-stripe transfers take turns
        for k, ((lo, length), ready) in enumerate(zip(stripes, events, strict=True)):
            header = stripe_header(self.secret, self.src, transfer_id, total, lo, length)
            lane = lanes[(first + k) % len(lanes)]
            lane.queue.put(Stripe(header, pieces(sources, lo, lo + length), ready, job))
        return job

    def _stage(self, data: list[torch.Tensor], offsets: list[int], host: torch.Tensor, stripes) -> list:
        """Device-to-host copies into ``host``, stripe by stripe on a side stream; an event per stripe."""
        device = next(d.device for d in data if d.is_cuda)
        if self._d2h_stream is None or self._d2h_stream.device != device:
            self._d2h_stream = torch.cuda.Stream(device)
        stream = self._d2h_stream
        stream.wait_stream(torch.cuda.current_stream(device))  # after the producers
        events = []
        with torch.cuda.stream(stream):
            for lo, length in stripes:
                for off, d in zip(offsets, data, strict=True):
                    a, b = max(lo, off), min(lo + length, off + d.numel())
                    if a < b:
                        host[a:b].copy_(d[a - off : b - off], non_blocking=True)
                event = torch.cuda.Event()
                event.record(stream)
                events.append(event)
        for d in data:
            if d.is_cuda:
                d.record_stream(stream)  # the caller may free d right after send()
        return events


def pieces(sources: list[tuple[int, np.ndarray]], lo: int, hi: int) -> list[np.ndarray]:
    """The bytes ``[lo, hi)`` of the packed layout: slices of ``sources`` ((offset, uint8 array)) with the
    alignment gaps between them filled with zeros."""
    out, at = [], lo
    for off, array in sources:
        a, b = max(lo, off), min(hi, off + len(array))
        if a >= b:
            continue
        if a > at:
            out.append(np.zeros(a - at, dtype=np.uint8))
        out.append(array[a - off : b - off])
        at = b
    if at < hi:
        out.append(np.zeros(hi - at, dtype=np.uint8))
    return out
