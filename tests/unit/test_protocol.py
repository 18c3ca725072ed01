"""Control-plane messages: typed msgpack round-trips, no pickle, other versions and junk refused."""

from __future__ import annotations

import msgspec
import pytest

from epd.protocol import (
    PROTOCOL_VERSION,
    EncodeItem,
    ItemReady,
    ItemRef,
    NewRequest,
    RequestOutput,
    SamplingParams,
    Shutdown,
    decode,
    encode,
)
from epd.transfer import TensorSpec, TransferHandle

MESSAGES = [
    EncodeItem(request_id="r", index=1, modality="image", source="data:image/png;base64,AA==", language_rank=2),
    NewRequest(
        request_id="r",
        prompt_token_ids=[1, 2, 646, 3],
        items=[ItemRef(index=0, modality="image", encoder_rank=0)],
        sampling=SamplingParams(max_tokens=4, temperature=0.5, seed=7),
    ),
    ItemReady(
        request_id="r",
        index=0,
        modality="image",
        token_ids=[643, 646, 646, 644],
        token_types=[0, 1, 1, 0],
        info={"grid_thw": [1, 4, 4], "second_per_grid": 0.5},
        tensor_names=["embeds", "deepstack"],
        handle=TransferHandle(
            backend="zmq", src=0, dst=2, transfer_id=3, specs=[TensorSpec("bfloat16", [6, 64])], payload=b"\x01"
        ),
        timestamps={"encode_start": 1.5},
    ),
    ItemReady(request_id="r", index=1, modality="image", error="cannot decode image x.png"),
    RequestOutput(request_id="r", token_ids=[5], finished=True, finish_reason="length", num_prompt_tokens=9),
    Shutdown(),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(msg):
    assert decode(encode(msg)) == msg


def test_other_protocol_version_is_refused():
    old = msgspec.msgpack.encode(Shutdown(v=PROTOCOL_VERSION + 1))
    with pytest.raises(ValueError, match=f"protocol v{PROTOCOL_VERSION + 1}"):
        decode(old)


@pytest.mark.parametrize(
    "frame",
    [b"\x80\x04\x95junk-pickle", msgspec.msgpack.encode({"type": "Nope"}), msgspec.msgpack.encode([1, 2])],
)
def test_junk_is_a_clear_error(frame):
    with pytest.raises(ValueError, match="malformed control message"):
        decode(frame)


def test_wrong_field_type_is_refused():
    frame = msgspec.msgpack.encode({"type": "RequestOutput", "request_id": 3})
    with pytest.raises(ValueError, match="malformed control message"):
        decode(frame)
