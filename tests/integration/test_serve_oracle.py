"""The oracle through the server: greedy requests with images, videos and audio sent with the official
``openai`` SDK to ``python -m epd.serve`` return transformers' ``generate`` tokens
(``return_token_ids``), for every family, colocated and 2e1p; the streamed answer of each request
equals its unstreamed one (tokens and text). One server per family and topology takes every case,
all at once (the engines batch them). Media go as ``data:`` URIs, as ``input_audio`` and as local
paths under ``media.allowed_dirs``."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest
from PIL import Image

from epd.media.synth import write_test_audio, write_test_video
from tests.conftest import write_requests
from tests.integration.oracle_utils import reference_tokens
from tests.integration.serve_harness import Server

MAX_TOKENS = 8
TOPOLOGIES = {"colocated": [], "2e1p": ["+topology=2e1p", "transfer=zmq", "engine.max_batch_tokens=16"]}
MIME = {".png": "image/png", ".mp4": "video/mp4", ".wav": "audio/wav", ".flac": "audio/flac"}


def _text(t: str) -> dict:
    return {"type": "text", "text": t}


def _url(kind: str, url: str) -> dict:
    return {"type": f"{kind}_url", f"{kind}_url": {"url": url}}


def data_uri(path) -> str:
    return f"data:{MIME[path.suffix]};base64,{base64.b64encode(path.read_bytes()).decode()}"


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve-media")
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (90, 130, 3), dtype=np.uint8)).save(d / "i.png")
    write_test_video(d / "v1.mp4", 2.0, 8, (160, 120), seed=1)
    write_test_video(d / "v2.mp4", 1.0, 10, (128, 96), seed=2)
    write_test_audio(d / "a1.wav", 1.5, 16000, seed=1)
    write_test_audio(d / "a2.flac", 0.8, 22050, fmt="flac", seed=2)
    return d


def vision(d) -> dict[str, list[dict]]:
    return {
        "image": [_url("image", data_uri(d / "i.png")), _text("What is shown?")],
        "video": [_text("Watch"), _url("video", data_uri(d / "v1.mp4")), _text("and summarise.")],
        "mixed": [
            _url("video", str(d / "v2.mp4")),  # a local path: media.allowed_dirs names its folder
            _text("then"),
            _url("image", data_uri(d / "i.png")),
            _url("video", data_uri(d / "v1.mp4")),
            _text("compare them."),
        ],
        "text": [_text("No media here, only words.")],
    }


def audio(d) -> dict[str, list[dict]]:
    b64 = base64.b64encode((d / "a1.wav").read_bytes()).decode()
    return {
        "audio": [_url("audio", data_uri(d / "a1.wav")), _text("What sound is this?")],
        "two-audios": [
            _text("First"),
            _url("audio", str(d / "a2.flac")),
            {"type": "input_audio", "input_audio": {"data": b64, "format": "wav"}},
            _text("differ?"),
        ],
    }


def omni(d) -> dict[str, list[dict]]:
    return {
        "audio": [_url("audio", data_uri(d / "a1.wav")), _text("What sound is this?")],
        "all": [
            _url("audio", data_uri(d / "a2.flac")),
            _text("and"),
            _url("image", data_uri(d / "i.png")),
            _url("video", str(d / "v2.mp4")),
            _text("together?"),
        ],
    }


FAMILIES = {"qwen2_5_vl": vision, "qwen3_vl": vision, "qwen3_vl_moe": vision, "qwen2_audio": audio, "qwen3_omni": omni}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_case(request, media, tmp_path_factory):
    from epd.tiny import write_tiny

    family = request.param
    ckpt = write_tiny(family, tmp_path_factory.mktemp(family) / "ckpt")
    bodies = FAMILIES[family](media)
    path = write_requests(tmp_path_factory.mktemp(f"{family}-req") / "r.jsonl", bodies, MAX_TOKENS)
    return family, ckpt, bodies, reference_tokens(ckpt, path)


async def ask(server: Server, model: str, parts: list[dict], stream: bool) -> tuple[list[int], str, str]:
    """(token ids, text, finish reason) of one greedy request."""
    async with server.aclient() as client:
        kwargs = {
            "model": model,
            "messages": [{"role": "user", "content": parts}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "extra_body": {"return_token_ids": True},
        }
        if not stream:
            out = await client.chat.completions.create(**kwargs)
            choice = out.choices[0]
            assert out.usage.completion_tokens == len(choice.token_ids)
            return choice.token_ids, choice.message.content, choice.finish_reason
        ids, text, reason = [], [], None
        chunks = await client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
        async for chunk in chunks:
            for choice in chunk.choices:
                ids += getattr(choice, "token_ids", None) or []
                text.append(choice.delta.content or "")
                reason = choice.finish_reason or reason
            if chunk.usage is not None:
                assert chunk.usage.completion_tokens == len(ids)
        return ids, "".join(text), reason


async def ask_all(server: Server, model: str, bodies: dict[str, list[dict]]) -> dict:
    cases = [(rid, stream) for rid in bodies for stream in (False, True)]
    answers = await asyncio.gather(*(ask(server, model, bodies[rid], stream) for rid, stream in cases))
    return dict(zip(cases, answers, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("topology", list(TOPOLOGIES))
def test_served_tokens_equal_transformers(tmp_path, family_case, media, topology):
    family, ckpt, bodies, reference = family_case
    server = Server(
        tmp_path / "run", f"model.path={ckpt}", f'media.allowed_dirs=["{media}"]', *TOPOLOGIES[topology]
    ).wait_ready()
    try:
        model = server.client().models.list().data[0].id
        got = asyncio.run(ask_all(server, model, bodies))
    finally:
        assert server.stop() == 0, server.output()
    for rid, ref in reference.items():
        (ids, text, reason), (s_ids, s_text, s_reason) = got[(rid, False)], got[(rid, True)]
        assert ids == ref, f"{family}/{rid} on {topology}: {ids} != transformers' {ref}"
        assert (s_ids, s_text, s_reason) == (ids, text, reason), f"{family}/{rid}: streamed != unstreamed"
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["summary"]["num_requests"] == 2 * len(bodies) and results["summary"]["num_failed"] == 0
