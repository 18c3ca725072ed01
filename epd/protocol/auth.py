"""Who may say what on the control plane.

Every frame a process sends is sealed with the job's secret: a ZMQ multipart message
``[b"epd<v>" + sender name, msgpack body, tag]`` where ``tag`` is a keyed BLAKE2b MAC over the
first two parts. A receiver opens it only if the prefix speaks this protocol version, the tag
verifies, and the sender's role may send that message type (``PERMISSIONS``). The secret reaches a
job's processes by environment (``epd.launch.secret``); it is never written to the store or to disk
in the run directory. Addresses published in the store are sealed the same way, so a process that
rewrites them cannot redirect anyone's messages.
"""

from __future__ import annotations

import hashlib
import hmac

from epd.protocol.messages import (
    PROTOCOL_VERSION,
    Abort,
    EncodeItem,
    Heartbeat,
    ItemDone,
    ItemReady,
    KvReady,
    Message,
    NewRequest,
    PeerLost,
    RequestOutput,
    Shutdown,
)

WIRE_PREFIX = f"epd{PROTOCOL_VERSION}:".encode()
TAG_BYTES = 32
MAX_SENDER_BYTES = 64

LANGUAGE_SIDE = frozenset({"language", "colocated", "prefill", "decode"})
ENCODER_SIDE = frozenset({"encoder", "colocated"})
ANYONE = frozenset({"frontend", "launcher", "encoder", "language", "colocated", "prefill", "decode"})

PERMISSIONS: dict[type[Message], frozenset[str]] = {
    NewRequest: frozenset({"frontend"}),
    EncodeItem: frozenset({"frontend"}),
    Abort: frozenset({"frontend"}),
    Shutdown: frozenset({"frontend"}),
    ItemReady: ENCODER_SIDE,
    ItemDone: ENCODER_SIDE,
    KvReady: frozenset({"prefill"}),
    RequestOutput: LANGUAGE_SIDE,
    Heartbeat: ANYONE,
    PeerLost: frozenset({"launcher"}),
}
"""Message type → roles whose processes may send it (``frontend``, ``launcher`` or an instance role)."""


class Rejected(Exception):
    """A frame that is not a valid message from a peer allowed to send it; ``kind`` says why."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def mac(secret: bytes, *parts: bytes) -> bytes:
    """Keyed BLAKE2b over ``parts``, each length-prefixed so no two part lists collide."""
    h = hashlib.blake2b(key=secret[:64], digest_size=TAG_BYTES)
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.digest()


def seal(secret: bytes, sender: str, body: bytes) -> list[bytes]:
    """The frames of one message from ``sender``."""
    head = WIRE_PREFIX + sender.encode()
    return [head, body, mac(secret, head, body)]


def unseal(secret: bytes, frames: list[bytes]) -> tuple[str, bytes]:
    """(sender, body) of a sealed message; ``Rejected`` when the frames are not one."""
    if len(frames) != 3:
        raise Rejected("malformed", f"{len(frames)} frame(s), not 3")
    head, body, tag = frames
    if not head.startswith(WIRE_PREFIX):
        kind = "version" if head.startswith(b"epd") else "malformed"
        raise Rejected(kind, f"frame prefix {bytes(head[:8])!r}, expected {WIRE_PREFIX!r}")
    sender = head[len(WIRE_PREFIX) :]
    if not 0 < len(sender) <= MAX_SENDER_BYTES:
        raise Rejected("malformed", "sender name missing or too long")
    if not hmac.compare_digest(tag, mac(secret, head, body)):
        raise Rejected("bad-mac", f"bad tag from a sender calling itself {sender[:32]!r}")
    return sender.decode("ascii", errors="replace"), body


def seal_value(secret: bytes, key: str, value: str) -> str:
    """``value`` with a tag binding it to store key ``key`` (for addresses published in the store)."""
    return f"{value} {mac(secret, key.encode(), value.encode()).hex()}"


def unseal_value(secret: bytes, key: str, sealed: str) -> str:
    """The value of ``seal_value``; ``Rejected`` when the tag does not match (the store was tampered with)."""
    value, _, tag = sealed.rpartition(" ")
    try:
        ok = hmac.compare_digest(bytes.fromhex(tag), mac(secret, key.encode(), value.encode()))
    except ValueError:
        ok = False
    if not ok:
        raise Rejected("bad-mac", f"store key {key!r} holds a value not written by this job")
    return value


def allowed(msg: Message, role: str) -> bool:
    """Whether a process of ``role`` may send ``msg``."""
    return role in PERMISSIONS.get(type(msg), frozenset())
