"""Liveness: heartbeats from a thread of every process, and who has been silent too long.

Ranks beat to the frontend and the frontend to every rank, each from a thread of its own with its
own sockets, so a process whose event loop is busy in a long model call still beats while one that
is stopped (SIGSTOP) or dead does not. The same thread watches the process's parent: a rank or
frontend whose launcher died (its parent changed) ends itself, so nothing outlives its job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable

import zmq

from epd.protocol import Channel, Heartbeat

log = logging.getLogger("epd")


class HeartbeatThread(threading.Thread):
    """Sends a ``Heartbeat`` to ``addresses`` every ``interval_s`` until ``stop``; if ``parent_pid`` is
    given, sends this process SIGTERM as soon as its parent is no longer that process."""

    def __init__(
        self,
        channel: Channel,
        addresses: list[str],
        interval_s: float,
        parent_pid: int | None = None,
        stats: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        super().__init__(name="epd-heartbeat", daemon=True)
        self.stats = stats
        self.channel = channel
        self.addresses = list(addresses)
        self.interval_s = interval_s
        self.parent_pid = parent_pid
        self._halt = threading.Event()

    def run(self) -> None:
        socks = []
        for address in self.addresses:
            sock = self.channel.ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 16)  # a silent peer gets a few queued beats, not a backlog
            sock.connect(address)
            socks.append(sock)
        try:
            while not self._halt.is_set():
                if self.parent_pid is not None and os.getppid() != self.parent_pid:
                    log.error("the launcher (pid %d) is gone: stopping", self.parent_pid)
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
                frames = self.channel.frames(Heartbeat(stats=self._stats()))
                for sock in socks:
                    with contextlib.suppress(zmq.Again):  # a peer not reading: its watcher notices, not us
                        sock.send_multipart(frames, zmq.NOBLOCK)
                self._halt.wait(self.interval_s)
        finally:
            for sock in socks:
                sock.close()

    def _stats(self) -> dict[str, float]:
        if self.stats is None:
            return {}
        try:
            return self.stats()
        except Exception:  # figures read while the loop changes them: skip this beat's, never the beat
            return {}

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=2)


class Liveness:
    """When each watched peer was last heard from; ``overdue`` names those silent for ``timeout_s``,
    each once."""

    def __init__(self, peers: list[str], timeout_s: float, now: float | None = None) -> None:
        start = time.monotonic() if now is None else now
        self.timeout_s = timeout_s
        self.last = dict.fromkeys(peers, start)
        self.lost: set[str] = set()

    def heard(self, peer: str, now: float | None = None) -> None:
        if peer in self.last and peer not in self.lost:
            self.last[peer] = time.monotonic() if now is None else now

    def forget(self, peer: str) -> None:
        """Stop watching ``peer`` (it was declared lost another way)."""
        self.lost.add(peer)

    def overdue(self, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        late = [p for p, t in self.last.items() if p not in self.lost and now - t > self.timeout_s]
        self.lost.update(late)
        return late

    def silence(self, peer: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        return now - self.last[peer]
