"""Receiving side of the zmq backend's lanes (``zmq_lanes.py``): a listening socket and, per connection,
a thread that checks each stripe's header and lands its bytes in place with one ``recv_into``."""

from __future__ import annotations

import hmac
import logging
import socket
import threading
import weakref
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

import epd.transfer.zmq_lanes as wire
from epd.protocol.auth import TAG_BYTES, mac
from epd.transfer.zmq_lanes import HEADER, MAGIC, shutdown

log = logging.getLogger("epd.transfer")

ACCEPT_POLL_S = 0.2  # how often the accepting thread looks whether close() was called


def _recv_exact(sock: socket.socket, view: memoryview) -> bool:
    """Fill ``view`` from ``sock``; False when the peer closed first."""
    while view:
        got = sock.recv_into(view, len(view), socket.MSG_WAITALL)
        if got == 0:
            return False
        view = view[got:]
    return True


@dataclass
class _Assembly:
    buffer: torch.Tensor  # [total] uint8 on the host (pinned for a GPU receiver)
    received: int = 0


class LaneReceiver:
    """Receiver side: a listening socket and, per connection, a thread landing stripes in place.

    ``alloc(nbytes)`` makes a transfer's buffer when its first stripe arrives. ``take(key)`` hands out
    a complete buffer, ``wait(key, timeout)`` waits for one, ``discard(key)`` drops one now or when it
    completes."""

    def __init__(
        self,
        host: str,
        ports: tuple[int, int],
        world_size: int,
        secret: bytes | None,
        max_bytes: int,
        max_connections: int,
        alloc: Callable[[int], torch.Tensor],
    ) -> None:
        self._world_size = world_size
        self._secret = secret
        self._max_bytes = max_bytes
        self._max_connections = max_connections
        self._alloc = alloc
        self._listener = _bind(host, ports)
        self._listener.settimeout(ACCEPT_POLL_S)
        self.address = self._listener.getsockname()[:2]
        self._cond = threading.Condition()
        self._assemblies: dict[tuple[int, int], _Assembly] = {}
        self._complete: set[tuple[int, int]] = set()
        self._discarded: set[tuple[int, int]] = set()
        self._conns: set[socket.socket] = set()
        self._stopping = False
        self.dropped = 0  # connections cut for a header that did not verify or fit
        self._threads = [threading.Thread(target=self._accept, name="epd-zmq-lanes-accept", daemon=True)]
        self._threads[0].start()  # the accepting thread stays first in the list

    def complete(self, key: tuple[int, int]) -> bool:
        with self._cond:
            return key in self._complete

    def wait(self, key: tuple[int, int], timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: key in self._complete, timeout_s)

    def take(self, key: tuple[int, int]) -> torch.Tensor:
        with self._cond:
            self._complete.remove(key)
            return self._assemblies.pop(key).buffer

    def discard(self, key: tuple[int, int]) -> None:
        with self._cond:
            if key in self._complete:
                self._complete.remove(key)
                del self._assemblies[key]
            else:
                self._discarded.add(key)

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            conns = list(self._conns)
        for conn in conns:
            shutdown(conn)  # wakes its thread out of recv
        accepting = self._threads[0]
        accepting.join()  # within ACCEPT_POLL_S; then the list of threads changes no more
        for thread in self._threads[1:]:
            thread.join(5)
        self._listener.close()
        self._assemblies.clear()

    def _accept(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                if self._stopping or len(self._conns) >= self._max_connections:
                    conn.close()
                    continue
                self._conns.add(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), name="epd-zmq-lane-recv", daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(wire.AUTH_TIMEOUT_S)  # until its hello
        head = bytearray(HEADER.size + TAG_BYTES)
        authentic = False
        try:
            while _recv_exact(conn, memoryview(head)):
                key, total, offset, length = self._check_header(bytes(head))
                if not authentic:
                    authentic = True
                    conn.settimeout(None)
                if not length:
                    continue  # hello
                buffer = self._assembly(key, total, length)
                view = memoryview(buffer.numpy())[offset : offset + length]
                if not _recv_exact(conn, view):
                    return  # the sender went away mid-stripe: its transfer times out on recv()
                self._landed(key, length)
        except (OSError, ValueError) as exc:
            if not self._stopping and (isinstance(exc, ValueError) or not authentic):
                self.dropped += 1
                if self.dropped == 1:
                    log.warning("zmq lanes: cut a connection that did not send a peer's data (%s)", exc)
        finally:
            with self._cond:
                self._conns.discard(conn)
            conn.close()

    def _check_header(self, head: bytes) -> tuple[tuple[int, int], int, int, int]:
        fields, tag = head[: HEADER.size], head[HEADER.size :]
        expected = mac(self._secret, b"zmq-lane", fields) if self._secret is not None else bytes(TAG_BYTES)
        if not hmac.compare_digest(tag, expected):
            raise ValueError("bad tag")
        magic, src, transfer_id, total, offset, length = HEADER.unpack(fields)
        if magic != MAGIC or not 0 <= src < self._world_size:
            raise ValueError("not a stripe of a peer")
        if not length and (total or offset):
            raise ValueError("an empty stripe that is not a hello")
        if total > self._max_bytes or offset + length > total:
            raise ValueError(f"stripe [{offset}, +{length}) of a {total}-byte transfer over the limit or outside it")
        return (src, transfer_id), total, offset, length

    def _assembly(self, key: tuple[int, int], total: int, length: int) -> torch.Tensor:
        with self._cond:
            assembly = self._assemblies.get(key)
            if assembly is not None:
                if assembly.buffer.numel() != total or assembly.received + length > total:
                    raise ValueError(f"stripes of transfer {key} disagree on its size")
                return assembly.buffer
        buffer = self._alloc(total)  # outside the lock: a first pinned allocation takes a while
        with self._cond:
            assembly = self._assemblies.setdefault(key, _Assembly(buffer))
            if assembly.buffer.numel() != total:
                raise ValueError(f"stripes of transfer {key} disagree on its size")
            return assembly.buffer

    def _landed(self, key: tuple[int, int], length: int) -> None:
        with self._cond:
            assembly = self._assemblies[key]
            assembly.received += length
            if assembly.received == assembly.buffer.numel():
                if key in self._discarded:
                    self._discarded.remove(key)
                    del self._assemblies[key]
                else:
                    self._complete.add(key)
                    self._cond.notify_all()


class HostBuffers:
    """Receive buffers of a CPU receiver, reused: a transfer's buffer comes back when the last tensor viewing
    it is freed, so later transfers land in pages already mapped (a fresh 154 MB buffer costs ~40k page
    faults: on a 2-core host it made lanes 3-10x slower). Sizes round up to powers of two; at most
    ``keep`` free buffers of each size are kept."""

    def __init__(self, keep: int = 2, smallest: int = 1 << 16) -> None:
        self._keep = keep
        self._smallest = smallest
        self._free: defaultdict[int, list[np.ndarray]] = defaultdict(list)
        self._lock = threading.Lock()

    def get(self, nbytes: int) -> torch.Tensor:
        """A [nbytes] uint8 tensor whose memory returns here with the last view of it."""
        size = max(self._smallest, 1 << max(nbytes - 1, 0).bit_length())
        with self._lock:
            array = self._free[size].pop() if self._free[size] else None
        if array is None:
            array = np.empty(size, dtype=np.uint8)
        view = array[:nbytes]
        weakref.finalize(view, self._put, array)
        return torch.frombuffer(view, dtype=torch.uint8)  # keeps `view` alive

    def _put(self, array: np.ndarray) -> None:
        with self._lock:
            if len(self._free[len(array)]) < self._keep:
                self._free[len(array)].append(array)


def _bind(host: str, ports: tuple[int, int], tries: int = 100) -> socket.socket:
    """A listening TCP socket on ``host`` at a random free port in ``ports`` (inclusive)."""
    rng = np.random.default_rng()
    for _ in range(tries):
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((host, int(rng.integers(ports[0], ports[1] + 1))))
        except OSError:
            sock.close()
            continue
        sock.listen(64)
        return sock
    raise RuntimeError(f"zmq lanes: no free port on {host} in [{ports[0]}, {ports[1]}] after {tries} tries")
