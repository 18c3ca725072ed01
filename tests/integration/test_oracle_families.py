"""The oracle for every family and modality: epd's greedy tokens equal transformers' ``generate``
(float32, CPU) on colocated, 1e1p, 2e1p and the prefill/decode splits 1e1p1d and 2e1p1d, for
requests with one or several items of each modality the family takes, mixed modalities and text
between them."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from PIL import Image

from epd.media.synth import write_test_audio, write_test_video
from tests.conftest import read_results, run_epd, write_requests
from tests.integration.oracle_utils import reference_tokens

MAX_TOKENS = 8
TOPOLOGIES = [
    ("colocated", "nccl"),
    ("1e1p", "shm"),
    ("2e1p", "zmq"),
    ("1e1p1d", "*"),
    ("2e1p1d", "shm"),
    ("1e1p_tp2", "zmq"),
]
PD_BACKENDS = ("nccl", "shm", "zmq")
"""1e1p1d runs each family over one backend, in turn (test_oracle.py runs every backend on Qwen2.5-VL)."""
# the language engine's mechanisms, forced on, must not change a token: 1e1p runs with a KV cache far
# smaller than the concurrent requests need (preemption + recompute) and prefix caching; 2e1p prefills
# in 16-token chunks and prefills each prompt's text while its items are still encoding
KV_TOKENS = {"qwen3_omni": 352}
SMALL_KV = ("1e1p", "1e1p1d", "1e1p_tp2")
"""1e1p's KV cache: room for the family's longest request (prompt + output), not for all of them."""
ENGINE_KNOBS = {
    "colocated": [],
    # + engine.kv_tokens, per family below; the encoder holds its items for one packed tower call, so the
    # media requests reach the language side together and preemption does not depend on timing
    "1e1p": ["engine.block_size=4", "engine.max_batch_tokens=32", "encoder.max_wait_ms=3000"],
    "1e1p_tp2": ["engine.block_size=4", "engine.max_batch_tokens=32", "encoder.max_wait_ms=3000"],
    "2e1p": ["engine.max_batch_tokens=16", "engine.block_size=4", "engine.overlap_encode_prefill=true"],
    # prefill chunks, a small KV cache on both sides (the decode instance preempts and recomputes from
    # the media rows the prefill instance sent), the shared chat prefix hitting the prefill's cache
    "1e1p1d": ["engine.block_size=4", "engine.max_batch_tokens=16", "encoder.max_wait_ms=3000"],
    "2e1p1d": ["engine.block_size=4", "engine.max_batch_tokens=24", "engine.overlap_encode_prefill=true"],
}


def _text(t: str) -> dict:
    return {"type": "text", "text": t}


def _url(kind: str, url: str) -> dict:
    return {"type": f"{kind}_url", f"{kind}_url": {"url": url}}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("fam-media")
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (90, 130, 3), dtype=np.uint8)).save(d / "i.png")
    write_test_video(d / "v1.mp4", 2.0, 8, (160, 120), seed=1)
    write_test_video(d / "v2.mp4", 1.0, 10, (128, 96), seed=2)
    write_test_audio(d / "a1.wav", 1.5, 16000, seed=1)
    write_test_audio(d / "a2.flac", 0.8, 22050, fmt="flac", seed=2)
    return d


def vision_requests(d) -> dict[str, list[dict]]:
    return {
        "image": [_url("image", str(d / "i.png")), _text("What is shown?")],
        "video": [_text("Watch"), _url("video", str(d / "v1.mp4")), _text("and summarise.")],
        "mixed": [
            _url("video", str(d / "v2.mp4")),
            _text("then"),
            _url("image", str(d / "i.png")),
            _url("video", str(d / "v1.mp4")),
            _text("compare them."),
        ],
        "text": [_text("No media here, only words.")],
    }


def audio_requests(d) -> dict[str, list[dict]]:
    b64 = base64.b64encode((d / "a1.wav").read_bytes()).decode()
    return {
        "audio": [_url("audio", str(d / "a1.wav")), _text("What sound is this?")],
        "two-audios": [
            _text("First"),
            _url("audio", str(d / "a2.flac")),
            {"type": "input_audio", "input_audio": {"data": b64, "format": "wav"}},
            _text("differ?"),
        ],
        "text": [_text("No media here, only words.")],
    }


def omni_requests(d) -> dict[str, list[dict]]:
    return {
        "image": [_url("image", str(d / "i.png")), _text("What is shown?")],
        "audio": [_url("audio", str(d / "a1.wav")), _text("What sound is this?")],
        "video": [_text("Watch"), _url("video", str(d / "v1.mp4"))],
        "all": [
            _url("audio", str(d / "a2.flac")),
            _text("and"),
            _url("image", str(d / "i.png")),
            _url("video", str(d / "v2.mp4")),
            _text("together?"),
        ],
        "text": [_text("No media here, only words.")],
    }


FAMILIES = {
    "qwen2_5_vl": vision_requests,
    "qwen3_vl": vision_requests,
    "qwen3_vl_moe": vision_requests,
    "qwen2_audio": audio_requests,
    "qwen3_omni": omni_requests,
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_case(request, media, tmp_path_factory):
    from epd.tiny import write_tiny

    family = request.param
    ckpt = write_tiny(family, tmp_path_factory.mktemp(family) / "ckpt")
    path = write_requests(tmp_path_factory.mktemp(f"{family}-req") / "r.jsonl", FAMILIES[family](media), MAX_TOKENS)
    return family, ckpt, path, reference_tokens(ckpt, path)


@pytest.mark.parametrize(("topology", "transfer"), TOPOLOGIES, ids=[t for t, _ in TOPOLOGIES])
def test_family_equals_transformers(tmp_path, family_case, media, topology, transfer):
    family, ckpt, path, reference = family_case
    if transfer == "*":
        transfer = PD_BACKENDS[list(FAMILIES).index(family) % len(PD_BACKENDS)]
    run_dir = tmp_path / "run"
    run_epd(
        run_dir,
        f"+topology={topology}",
        f"transfer={transfer}",
        f"model.path={ckpt}",
        "workload=file",
        f"workload.path={path}",
        f'media.allowed_dirs=["{media}","{path.parent}"]',  # the media live beside, not under, the workload file
        *ENGINE_KNOBS[topology],
        *([f"engine.kv_tokens={KV_TOKENS.get(family, 160)}"] if topology in SMALL_KV else []),
    )
    got = {r["id"]: r for r in read_results(run_dir)["requests"]}
    assert set(got) == set(reference)
    for rid, ref in reference.items():
        assert got[rid]["error"] is None, f"{family}/{rid}: {got[rid]['error']}"
        assert got[rid]["output_token_ids"] == ref, f"{family}/{rid} on {topology}/{transfer}"
    if topology in ("1e1p", "1e1p_tp2"):  # (decode-side preemption of a split: tests/engine/test_engine_pd.py)
        assert sum(r["num_preemptions"] for r in got.values()) > 0, "the small KV cache should force preemption"
    if topology in SMALL_KV:
        assert sum(r["num_cached_tokens"] for r in got.values()) > 0, "the shared chat prefix should hit"
    if topology.endswith("1d"):
        assert all(r["kv_transfer_bytes"] > 0 for r in got.values()), "every request's KV cache moved"


def test_omni_video_with_its_audio_track(tmp_path, media):
    """Qwen3-Omni with media.use_audio_in_video: one span interleaves a video's frames and its audio."""
    from epd.media.synth import write_test_video
    from epd.tiny import write_tiny

    write_test_video(tmp_path / "va.mp4", 2.0, 8, (160, 120), with_audio=True, seed=3)
    ckpt = write_tiny("qwen3_omni", tmp_path / "ckpt")
    bodies = {
        "video+audio": [_url("video", str(tmp_path / "va.mp4")), _text("What happens?")],
        "with-image": [_url("image", str(media / "i.png")), _url("video", str(tmp_path / "va.mp4"))],
    }
    path = write_requests(tmp_path / "r.jsonl", bodies, MAX_TOKENS)
    reference = reference_tokens(ckpt, path, audio_in_video=True)
    run_dir = tmp_path / "run"
    run_epd(
        run_dir,
        "+topology=1e1p",
        "transfer=shm",
        f"model.path={ckpt}",
        "media.use_audio_in_video=true",
        "workload=file",
        f"workload.path={path}",
        f'media.allowed_dirs=["{media}","{tmp_path}"]',
    )
    got = {r["id"]: r for r in read_results(run_dir)["requests"]}
    for rid, ref in reference.items():
        assert got[rid]["error"] is None, got[rid]["error"]
        assert got[rid]["output_token_ids"] == ref, rid
