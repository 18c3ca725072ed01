"""ZMQ plumbing of the control plane: one PULL inbox per process, PUSH sockets to peers.

Addresses are published in the job's key-value store (``torch.distributed.Store``) under
``epd/addr/<name>``, so nothing needs fixed ports and multi-node jobs work over TCP.
"""

from __future__ import annotations

import zmq

from epd.net import reachable_address
from epd.protocol.messages import AnyMessage, Message, decode, encode


class Channel:
    """A process's inbox plus lazily connected outboxes to named peers."""

    def __init__(self, name: str, store, host: str | None = None) -> None:
        self.name = name
        self.store = store
        self.ctx = zmq.Context()
        self.inbox = self.ctx.socket(zmq.PULL)
        self.inbox.setsockopt(zmq.LINGER, 0)
        host = host or reachable_address(store)
        port = self.inbox.bind_to_random_port(f"tcp://{host}")
        self.address = f"tcp://{host}:{port}"
        store.set(f"epd/addr/{name}", self.address)
        self._out: dict[str, zmq.Socket] = {}
        self._poller = zmq.Poller()
        self._poller.register(self.inbox, zmq.POLLIN)

    def send(self, peer: str, msg: Message) -> None:
        sock = self._out.get(peer)
        if sock is None:
            address = self.store.get(f"epd/addr/{peer}").decode()  # blocks until the peer is up
            sock = self.ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 2000)  # let a final Shutdown leave before close
            sock.connect(address)
            self._out[peer] = sock
        sock.send(encode(msg))

    def recv(self, timeout_ms: int) -> list[AnyMessage]:
        """All messages waiting now, or after up to ``timeout_ms`` if none is."""
        msgs = []
        if self._poller.poll(timeout_ms):
            while True:
                try:
                    frame = self.inbox.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                msgs.append(decode(frame))
        return msgs

    def close(self) -> None:
        for sock in self._out.values():
            sock.close()
        self.inbox.close()
        self.ctx.term()


def rank_name(rank: int) -> str:
    return f"rank{rank}"


FRONTEND = "frontend"
