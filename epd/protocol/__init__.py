"""Control plane: typed, versioned messages over ZMQ (no pickle), sealed with the job secret."""

from epd.protocol.channel import FRONTEND, LAUNCHER, Channel, job_roles, rank_name
from epd.protocol.messages import (
    PROTOCOL_VERSION,
    Abort,
    EncodeItem,
    Heartbeat,
    ItemDone,
    ItemReady,
    ItemRef,
    Message,
    NewRequest,
    PeerLost,
    RequestOutput,
    SamplingParams,
    Shutdown,
    decode,
    encode,
)

__all__ = [
    "FRONTEND",
    "LAUNCHER",
    "PROTOCOL_VERSION",
    "Abort",
    "Channel",
    "EncodeItem",
    "Heartbeat",
    "ItemDone",
    "ItemReady",
    "ItemRef",
    "Message",
    "NewRequest",
    "PeerLost",
    "RequestOutput",
    "SamplingParams",
    "Shutdown",
    "decode",
    "encode",
    "job_roles",
    "rank_name",
]
