"""Typed control-plane messages. Encoded with msgspec (msgpack); never pickled.

Every message carries the protocol version; a peer speaking another version is refused with a
clear error instead of being misread. Tensors never travel here: only a transfer handle does.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from epd.transfer import TransferHandle

PROTOCOL_VERSION = 3

INT64_MAX = 2**63 - 1
MAX_TOKENS = 2**31 - 1


class Message(msgspec.Struct, tag=True, kw_only=True):
    """Base of every control message; ``v`` is the protocol version."""

    v: int = PROTOCOL_VERSION


class SamplingParams(msgspec.Struct, kw_only=True):
    """How a request samples; the bounds are checked when a message is decoded, so nothing out of
    range reaches an engine."""

    max_tokens: Annotated[int, Meta(ge=1, le=MAX_TOKENS)] = 16
    temperature: Annotated[float, Meta(ge=0.0, le=1e6)] = 0.0
    """0 = greedy."""
    top_k: Annotated[int, Meta(ge=0, le=MAX_TOKENS)] = 0
    """Sample among the k most likely tokens (0 = all)."""
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] = 1.0
    """Sample within the smallest set of tokens whose probability reaches p (1 = all)."""
    ignore_eos: bool = False
    """Generate ``max_tokens`` regardless of EOS and stop tokens (benchmarking)."""
    seed: Annotated[int, Meta(ge=-INT64_MAX - 1, le=INT64_MAX)] | None = None
    """Seed of this request's samples: the same seed gives the same tokens whatever the batch."""
    stop_token_ids: list[int] = []
    """Tokens besides the model's EOS that end the request."""
    stop: list[str] = []
    """Strings that end the request (checked by the frontend on the detokenized text)."""


class ItemRef(msgspec.Struct, kw_only=True):
    index: int
    modality: str
    encoder_rank: int


class EncodeItem(Message):
    """frontend → encoder: fetch, preprocess and encode one media item of a request."""

    request_id: str
    index: int
    modality: str
    source: str
    language_rank: int
    content_hash: str | None = None
    """Hash of the media's content (``epd.scheduler.content_hash``); with it the encoder's embedding cache
    can serve the item without decoding it."""
    est_tokens: int = 0
    """The frontend's estimate of the item's tokens (0: none)."""


class NewRequest(Message):
    """frontend → language (or prefill): a tokenized prompt (one placeholder token per media item)."""

    request_id: str
    prompt_token_ids: list[int]
    items: list[ItemRef]
    sampling: SamplingParams
    decode_rank: int = -1
    """With separate prefill and decode instances: the decode instance (leader rank) that continues the
    request after its first token (-1: the instance that prefills it also decodes it)."""


class ItemReady(Message):
    """encoder → language: one item's embeddings were sent (or the item failed: ``error``).

    ``token_ids``/``token_types`` are the item's expanded prompt span; ``info`` holds what the
    family's positions need (grid, timing); ``tensor_names`` name the tensors of ``handle`` in order.
    """

    request_id: str
    index: int
    modality: str
    token_ids: list[int] = []
    token_types: list[int] = []
    info: dict[str, Any] = {}
    tensor_names: list[str] = []
    handle: TransferHandle | None = None
    error: str | None = None
    timestamps: dict[str, float] = {}


class RequestOutput(Message):
    """language → frontend: new tokens of a request, its stage timestamps, and whether it ended."""

    request_id: str
    token_ids: list[int] = []
    offset: int = 0
    """Index of ``token_ids[0]`` in the request's output: outputs of one request may come from two ranks
    (its prefill and decode instances) and arrive out of order; the frontend orders them by this."""
    finished: bool = False
    finish_reason: str | None = None
    error: str | None = None
    num_prompt_tokens: int = 0
    timestamps: dict[str, float] = {}
    num_cached_tokens: int = 0
    """Prompt tokens the prefix cache served (set when the request finishes)."""
    num_preemptions: int = 0
    """Times the request lost its KV cache and was recomputed (set when it finishes)."""
    kv_transfer_bytes: int = 0
    """Bytes of KV cache that moved from its prefill instance to this decode instance (set once)."""


class KvReady(Message):
    """prefill → decode: a request's KV cache was sent (``handle``), with what decode needs to go on.

    ``token_ids`` is the expanded prompt followed by the first sampled token (whose KV the decode
    instance computes in its first step); ``prompt_len`` of them have KV in the transfer, laid out
    [layers, 2, blocks, block_size, kv_heads, head_dim] in ``tensor_names[0]`` (``kv``). The other
    tensors let the decode instance recompute the prompt if it must preempt it: the media rows of the
    prompt and their embeddings (``mm_rows``, ``mm_embeds``), DeepStack features, rope positions.
    """

    request: NewRequest
    token_ids: list[int]
    prompt_len: int
    rope_delta: float = 0.0
    item_spans: list[tuple[int, int, str]] = []
    """(start, end, content hash) of each media item in the prompt (the decode side's prefix cache)."""
    num_cached_tokens: int = 0
    num_preemptions: int = 0
    tensor_names: list[str] = []
    handle: TransferHandle | None = None
    timestamps: dict[str, float] = {}


class Abort(Message):
    """frontend → language and encoders: stop a request now (a stop string matched, its client left, its
    deadline passed, its encoder was lost); its KV blocks are freed and its items not encoded or sent."""

    request_id: str


class ItemDone(Message):
    """encoder → frontend: one item left the encoder (encoded, served from cache, or failed).

    Drains the item's outstanding work in load-aware policies, and records how it was served:
    ``cache`` is ``off``, ``miss``, ``device``, ``host`` or ``inflight``; ``batch_*`` describe the
    tower call that encoded it (``batch_id`` -1: none); ``timestamps`` are the encoder's stages.
    """

    request_id: str
    index: int
    encoder_rank: int
    num_tokens: int = 0
    est_tokens: int = 0
    cache: str = "off"
    batch_id: int = -1
    batch_size: int = 0
    batch_tokens: int = 0
    error: str | None = None
    timestamps: dict[str, float] = {}


class Shutdown(Message):
    """frontend → every rank: the run is over."""

    reason: str = "done"


class Heartbeat(Message):
    """any process → its watchers (ranks → frontend, frontend → ranks): still alive. Sent from a
    thread every ``launch.heartbeat_interval_s``, so a busy event loop still beats; a stopped
    (SIGSTOP) or dead process does not. A rank's beat carries its load (``stats``: KV blocks free,
    sequences waiting and running, encoder queue), which the frontend's metrics and policies read."""

    stats: dict[str, float] = {}


class PeerLost(Message):
    """launcher → frontend: a rank's process ended before the job told it to stop."""

    rank: int
    reason: str


AnyMessage = (
    EncodeItem | NewRequest | ItemReady | KvReady | RequestOutput | ItemDone | Abort | Shutdown | Heartbeat | PeerLost
)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnyMessage)


def encode(msg: Message) -> bytes:
    return _encoder.encode(msg)


def decode(data: bytes) -> AnyMessage:
    """Decode one message; a malformed frame or another protocol version raises ``ValueError``."""
    try:
        msg = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"malformed control message: {exc}") from exc
    if msg.v != PROTOCOL_VERSION:
        raise ValueError(f"peer speaks protocol v{msg.v}, this epd speaks v{PROTOCOL_VERSION}")
    return msg
