"""Acknowledgements of the shm backend: a receiver tells the sender which part of a transfer it is done
with, so the sender can reuse the pool range (or drop the tensors) behind it.

Over ZMQ PUSH -> PULL on loopback only (msgpack, never pickle); the receiver sends to an address only
if it is a loopback port, so a handle cannot make it connect anywhere else. With the job secret every
ack carries a tag over its body: an ack forged by a local process would let the sender reuse a range
that a receiver still reads, so anything without a valid tag is ignored.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterator

import msgspec
import zmq

from epd.protocol.auth import mac

ACK_ADDRESS = re.compile(r"tcp://127\.0\.0\.1:[0-9]{1,5}")
HOST_PART = 0  # the transfer's host tensors (pooled shm range)
CUDA_PART = 1  # its device tensors (staging range and event, or the tensors themselves)


class Ack(msgspec.Struct, frozen=True, array_like=True):
    receiver: int
    transfer_id: int
    part: int  # HOST_PART or CUDA_PART


def check_ack_address(address: str) -> None:
    """``ValueError`` unless ``address`` is a loopback TCP port."""
    if not ACK_ADDRESS.fullmatch(address):
        raise ValueError(f"shm handle with an ack address {address[:64]!r} that is not a loopback port")


def _tag(secret: bytes | None, body: bytes) -> bytes:
    return mac(secret, b"shm-ack", body) if secret is not None else b""


class AckInbox:
    """Sender side: one PULL socket on a loopback port; ``drain()`` yields the authentic acks that came in."""

    def __init__(self, context: zmq.Context, secret: bytes | None) -> None:
        self._secret = secret
        self._sock = context.socket(zmq.PULL)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, 256)
        port = self._sock.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self._decoder = msgspec.msgpack.Decoder(Ack)
        self.dropped = 0  # messages on the port that were not authentic acks

    def drain(self) -> Iterator[Ack]:
        while True:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2 or not hmac.compare_digest(frames[1], _tag(self._secret, frames[0])):
                self.dropped += 1  # not a peer's ack: a local process poking the port
                continue
            try:
                yield self._decoder.decode(frames[0])
            except msgspec.DecodeError:
                self.dropped += 1

    def close(self) -> None:
        self._sock.close()


class AckOutbox:
    """Receiver side: one PUSH socket per sender's ack address (checked before the first use)."""

    def __init__(self, context: zmq.Context, rank: int, secret: bytes | None) -> None:
        self._context = context
        self._secret = secret
        self._rank = rank
        self._socks: dict[str, zmq.Socket] = {}
        self._encoder = msgspec.msgpack.Encoder()

    def send(self, address: str, transfer_id: int, part: int) -> None:
        sock = self._socks.get(address)
        if sock is None:
            check_ack_address(address)
            sock = self._socks[address] = self._context.socket(zmq.PUSH)
            sock.connect(address)
        body = self._encoder.encode(Ack(self._rank, transfer_id, part))
        sock.send_multipart([body, _tag(self._secret, body)])

    def close(self, linger_ms: int = 1000) -> None:
        for sock in self._socks.values():
            sock.close(linger=linger_ms)
        self._socks.clear()
