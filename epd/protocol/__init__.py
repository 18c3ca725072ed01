"""Control plane: typed, versioned messages over ZMQ (no pickle)."""

from epd.protocol.channel import FRONTEND, Channel, rank_name
from epd.protocol.messages import (
    PROTOCOL_VERSION,
    Abort,
    EncodeItem,
    ItemReady,
    ItemRef,
    Message,
    NewRequest,
    RequestOutput,
    SamplingParams,
    Shutdown,
    decode,
    encode,
)

__all__ = [
    "FRONTEND",
    "PROTOCOL_VERSION",
    "Abort",
    "Channel",
    "EncodeItem",
    "ItemReady",
    "ItemRef",
    "Message",
    "NewRequest",
    "RequestOutput",
    "SamplingParams",
    "Shutdown",
    "decode",
    "encode",
    "rank_name",
]
