"""ZMQ plumbing of the control plane: one PULL inbox per process, PUSH sockets to peers.

Every process binds its inbox on the job's bind address (127.0.0.1 for a single-node job) and
publishes the address in the job's key-value store under ``epd/addr/<name>``, sealed with the job
secret; a peer's address is read (and its seal checked) once, on the first message to it. Frames are
sealed and opened by ``epd.protocol.auth``. Anything that does not open — undecodable bytes, another
protocol version, a bad tag, an unknown type, a sender whose role may not send that type — is dropped
and counted (``Channel.dropped``), logged once per kind with the sender's address, and the process
goes on. Frames over ``max_message_bytes`` never reach Python: ZMQ's own ``MAXMSGSIZE`` disconnects
the peer that sends one.
"""

from __future__ import annotations

import logging
from collections import Counter

import zmq

from epd.protocol.auth import Rejected, allowed, seal, seal_value, unseal, unseal_value
from epd.protocol.messages import AnyMessage, Message, decode, encode

log = logging.getLogger("epd.protocol")

SEND_HWM = 100_000
"""Messages queued for one peer before sends to it are dropped (a stopped peer must not block us)."""


class Channel:
    """A process's inbox plus outboxes to named peers, all sealed with the job's secret.

    ``roles`` maps every process name of the job (``frontend``, ``launcher``, ``rank<i>``) to its role;
    a message from a name outside it, or from a role not allowed to send its type, is dropped.
    """

    def __init__(
        self,
        name: str,
        store,
        secret: bytes,
        roles: dict[str, str],
        bind_host: str = "127.0.0.1",
        max_message_bytes: int = 16 << 20,
    ) -> None:
        self.name = name
        self.store = store
        self.secret = secret
        self.roles = dict(roles)
        self.dropped: Counter[str] = Counter()
        self._logged: set[str] = set()
        self.ctx = zmq.Context()
        self.inbox = self.ctx.socket(zmq.PULL)
        self.inbox.setsockopt(zmq.LINGER, 0)
        self.inbox.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        port = self.inbox.bind_to_random_port(f"tcp://{bind_host}")
        self.address = f"tcp://{bind_host}:{port}"
        store.set(address_key(name), seal_value(secret, address_key(name), self.address))
        self._out: dict[str, zmq.Socket] = {}
        self._addresses: dict[str, str] = {}  # peers' inbox addresses, each read (and checked) once
        self._poller = zmq.Poller()
        self._poller.register(self.inbox, zmq.POLLIN)

    # ---- sending --------------------------------------------------------------------------------

    def peer_address(self, peer: str) -> str:
        """The inbox address ``peer`` published (waits until it has); ``Rejected`` if the seal is wrong."""
        address = self._addresses.get(peer)
        if address is None:
            sealed = self.store.get(address_key(peer)).decode()
            address = self._addresses[peer] = unseal_value(self.secret, address_key(peer), sealed)
        return address

    def resolve(self, peers: list[str]) -> None:
        """Read and check the addresses of ``peers`` now (start-up), once: later rewrites of the store do
        not reach this process. ``Rejected`` when an address is not this job's."""
        for peer in peers:
            self.peer_address(peer)

    def send(self, peer: str, msg: Message) -> bool:
        """Queue ``msg`` for ``peer``; False (and counted) when the peer's queue is full (it is not reading)
        or its published address is not authentic."""
        sock = self._out.get(peer)
        if sock is None:
            try:
                address = self.peer_address(peer)
            except Rejected as exc:
                self._drop("bad-address", f"to {peer}: {exc.detail}")
                return False
            sock = self.ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 2000)  # let a final Shutdown leave before close
            sock.setsockopt(zmq.SNDHWM, SEND_HWM)
            sock.connect(address)
            self._out[peer] = sock
        try:
            sock.send_multipart(self.frames(msg), zmq.NOBLOCK)
        except zmq.Again:
            self._drop("send-queue-full", f"to {peer}")
            return False
        return True

    def frames(self, msg: Message) -> list[bytes]:
        """``msg`` sealed as this process (for sockets other threads own, e.g. the heartbeat's)."""
        return seal(self.secret, self.name, encode(msg))

    # ---- receiving ------------------------------------------------------------------------------

    def wake_on(self, sock: zmq.Socket) -> None:
        """Make ``recv`` return as soon as ``sock`` (e.g. an inproc socket another thread of this
        process writes to) is readable; its owner drains it."""
        self._poller.register(sock, zmq.POLLIN)

    def recv(self, timeout_ms: int) -> list[tuple[str, AnyMessage]]:
        """(sender, message) of every valid message waiting now, or after up to ``timeout_ms`` if none is."""
        out = []
        if self._poller.poll(timeout_ms):
            while True:
                try:
                    frames = self.inbox.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                got = self._open(frames)
                if got is not None:
                    out.append(got)
        return out

    def _open(self, frames: list[zmq.Frame]) -> tuple[str, AnyMessage] | None:
        try:
            sender, body = unseal(self.secret, [f.bytes for f in frames])
            role = self.roles.get(sender)
            if role is None:
                raise Rejected("unknown-sender", f"sender {sender!r} is not a process of this job")
            try:
                msg = decode(body)
            except ValueError as exc:
                raise Rejected("undecodable", str(exc)[:200]) from None
            if not allowed(msg, role):
                raise Rejected("not-allowed", f"{sender} ({role}) may not send {type(msg).__name__}")
        except Rejected as exc:
            self._drop(exc.kind, exc.detail, _peer_address(frames[0]))
            return None
        return sender, msg

    def _drop(self, kind: str, detail: str, peer: str = "") -> None:
        self.dropped[kind] += 1
        if kind not in self._logged:  # once per kind: a flood must not flood the log
            self._logged.add(kind)
            log.warning("%s: dropped a control message (%s) from %s: %s", self.name, kind, peer or "?", detail)

    def close(self, linger_ms: int = 2000) -> None:
        """Close every socket, letting queued messages leave for at most ``linger_ms``."""
        for sock in self._out.values():
            sock.close(linger=linger_ms)
        self.inbox.close(linger=0)
        self.ctx.term()


def _peer_address(frame: zmq.Frame) -> str:
    try:
        return frame.get("Peer-Address")
    except (zmq.ZMQError, AttributeError, KeyError):
        return ""


def address_key(name: str) -> str:
    return f"epd/addr/{name}"


def rank_name(rank: int) -> str:
    return f"rank{rank}"


FRONTEND = "frontend"
LAUNCHER = "launcher"


def launcher_name(node: int) -> str:
    """The launcher of node ``node`` (epd's own launcher runs one per node)."""
    return LAUNCHER if node == 0 else f"{LAUNCHER}{node}"


def job_roles(topology, nnodes: int = 1) -> dict[str, str]:
    """Every process name of a job → its role: the frontend, the launchers and each rank's instance role."""
    roles = {FRONTEND: "frontend", **{launcher_name(n): "launcher" for n in range(nnodes)}}
    for rank in range(topology.world_size):
        roles[rank_name(rank)] = topology.instance_at(rank).role
    return roles
