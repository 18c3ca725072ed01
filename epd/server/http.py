"""``HttpThread``: uvicorn serving the app from a thread of its own, on a socket bound at once.

The socket is bound in the constructor, so a port in use fails the start-up with a clear error and
``server.port=0`` learns its port before anything else runs. uvicorn installs no signal handlers
outside the main thread: SIGTERM and Ctrl-C stay the frontend's (``epd.server.loop``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable

import uvicorn

log = logging.getLogger("epd.server")

GRACEFUL_S = 5
"""At shutdown, how long open connections get to finish their answers."""


class HttpThread(threading.Thread):
    """Serves ``app`` on ``host:port``; ``on_loop(loop)`` runs in the thread once its loop exists."""

    def __init__(self, app, host: str, port: int, on_loop: Callable[[asyncio.AbstractEventLoop], None]) -> None:
        super().__init__(name="epd-http", daemon=True)
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so, and without it Nagle's
        # algorithm holds a stream's first event until the client's delayed ACK (40 ms on Linux)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            raise ValueError(f"server.port={port} on {host} cannot be used ({exc.strerror}): pick another") from None
        self.sock.listen(2048)
        self.host, self.port = host, self.sock.getsockname()[1]
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=GRACEFUL_S
        )
        self.server = uvicorn.Server(config)
        self.on_loop = on_loop
        self.started = threading.Event()
        self.error: BaseException | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to the frontend's thread
            self.error = exc
            log.error("the HTTP server stopped: %s: %s", type(exc).__name__, exc)
        finally:
            self.started.set()

    async def _serve(self) -> None:
        self.on_loop(asyncio.get_running_loop())
        self.started.set()
        await self.server.serve(sockets=[self.sock])

    def stop(self, timeout_s: float = GRACEFUL_S + 2) -> None:
        self.server.should_exit = True
        if self.is_alive():
            self.join(timeout_s)
        self.sock.close()
