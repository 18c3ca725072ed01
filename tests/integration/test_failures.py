"""Bad input fails its own request only (test_lifecycle.py: crashes, signals and lost ranks)."""

from __future__ import annotations

import base64

import numpy as np
from PIL import Image

from tests.conftest import read_results, run_epd, write_requests
from tests.integration.oracle_utils import image_part


def test_bad_media_fails_only_its_request(tmp_path, tiny_qwen25vl):
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(good)
    truncated = tmp_path / "truncated.jpg"
    Image.open(good).convert("RGB").save(tmp_path / "full.jpg")
    truncated.write_bytes((tmp_path / "full.jpg").read_bytes()[:300])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image at all" * 10)
    sliver = tmp_path / "sliver.png"  # decodes fine, but the processor refuses a 300:1 aspect ratio
    Image.new("RGB", (600, 2), (9, 9, 9)).save(sliver)
    not_b64 = "data:image/png;base64,@@@not-base64@@@"
    png_b64 = "data:image/png;base64," + base64.b64encode(good.read_bytes()).decode()
    bodies = {
        "ok-path": [image_part(str(good))],
        "missing": [image_part(str(tmp_path / "nope.png"))],
        "ok-data-uri": [image_part(png_b64)],
        "truncated": [image_part(str(good)), image_part(str(truncated))],
        "garbage": [image_part(str(garbage))],
        "bad-base64": [image_part(not_b64)],
        "ok-file-url": [image_part(good.as_uri())],
        "sliver": [image_part(str(sliver))],
    }
    hi = {"type": "text", "text": "hi"}
    path = write_requests(tmp_path / "requests.jsonl", {rid: [*parts, hi] for rid, parts in bodies.items()}, 5)

    run_dir = tmp_path / "run"
    run_epd(
        run_dir,
        "+topology=1e1p",
        "transfer=zmq",
        f"model.path={tiny_qwen25vl}",
        "workload=file",
        f"workload.path={path}",
        code=3,  # some requests failed
    )
    got = {r["id"]: r for r in read_results(run_dir)["requests"]}
    assert set(got) == set(bodies)
    for rid in ("ok-path", "ok-data-uri", "ok-file-url"):
        assert got[rid]["error"] is None and len(got[rid]["output_token_ids"]) >= 1
    assert "nope.png" in got["missing"]["error"] and "cannot read media file" in got["missing"]["error"]
    assert "media item 1" in got["truncated"]["error"] and "cannot decode image" in got["truncated"]["error"]
    assert "cannot decode image" in got["garbage"]["error"]
    assert "not valid base64" in got["bad-base64"]["error"]
    assert "could not be processed" in got["sliver"]["error"] and "aspect ratio" in got["sliver"]["error"]
    for rid in ("missing", "truncated", "garbage", "bad-base64", "sliver"):
        assert got[rid]["output_token_ids"] == []
    summary = read_results(run_dir)["summary"]
    assert summary["num_failed"] == 5


def test_bad_video_and_audio_fail_only_their_request(tmp_path, tiny_qwen25vl):
    from epd.media.synth import write_test_audio, write_test_video

    good = tmp_path / "good.mp4"
    write_test_video(good, 1.0, 8, (96, 64))
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 3])
    audio_only = tmp_path / "audio-only.m4a"
    write_test_audio(audio_only, 1.0, 16000, fmt="m4a")
    bodies = {
        "ok-video": [_vpart(str(good))],
        "truncated-video": [_vpart(str(truncated))],
        "no-video-stream": [_vpart(str(audio_only))],
        "unreachable": [image_part("http://127.0.0.1:9/nothing.png")],
        "audio-to-vision-model": [{"type": "audio_url", "audio_url": {"url": str(audio_only)}}],
    }
    hi = {"type": "text", "text": "hi"}
    path = write_requests(tmp_path / "requests.jsonl", {rid: [*parts, hi] for rid, parts in bodies.items()}, 4)
    run_dir = tmp_path / "run"
    run_epd(
        run_dir,
        "+topology=1e1p",
        "transfer=shm",
        f"model.path={tiny_qwen25vl}",
        "workload=file",
        f"workload.path={path}",
        code=3,
    )
    got = {r["id"]: r for r in read_results(run_dir)["requests"]}
    assert got["ok-video"]["error"] is None and got["ok-video"]["output_token_ids"]
    assert "truncated.mp4" in got["truncated-video"]["error"]
    assert "no video stream" in got["no-video-stream"]["error"]
    assert "127.0.0.1:9" in got["unreachable"]["error"]
    assert "audio input is not supported by this model" in got["audio-to-vision-model"]["error"]


def _vpart(url: str) -> dict:
    return {"type": "video_url", "video_url": {"url": url}}


def test_modality_groups_route_and_unserved_modalities_are_refused(tmp_path, tiny_qwen25vl):
    from epd.media.synth import write_test_video

    image = tmp_path / "i.png"
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(image)
    video = tmp_path / "v.mp4"
    write_test_video(video, 1.0, 8, (96, 64))
    bodies = {
        "r0": [image_part(str(image)), _vpart(str(video))],
        "r1": [_vpart(str(video))],
        "r2": [image_part(str(image))],
    }
    path = write_requests(tmp_path / "requests.jsonl", bodies, 3)

    run_dir = tmp_path / "by-modality"
    run_epd(
        run_dir,
        "+topology=2e1p_by_modality",
        "scheduler=modality",
        "transfer=zmq",
        f"model.path={tiny_qwen25vl}",
        "workload=file",
        f"workload.path={path}",
    )
    for rec in read_results(run_dir)["requests"]:
        assert rec["error"] is None
        for item in rec["items"]:
            assert item["encoder"] == (0 if item["modality"] == "image" else 1)

    run_dir = tmp_path / "image-only"
    run_epd(
        run_dir,
        "+topology=1e1p",
        "+topology.instances.0.modalities=[image]",
        f"model.path={tiny_qwen25vl}",
        "workload=file",
        f"workload.path={path}",
        code=3,
    )
    got = {r["id"]: r for r in read_results(run_dir)["requests"]}
    assert got["r2"]["error"] is None
    for rid in ("r0", "r1"):
        assert "no encoder of topology '1e1p' takes video" in got[rid]["error"]


def test_bad_audio_fails_only_its_request(tmp_path):
    import wave

    from epd.media.synth import write_test_audio
    from epd.tiny import write_tiny

    ckpt = write_tiny("qwen2_audio", tmp_path / "ckpt")
    good = tmp_path / "good.wav"
    write_test_audio(good, 1.0, 16000)
    empty = tmp_path / "empty.wav"
    with wave.open(str(empty), "wb") as w:  # a valid wav header with zero samples
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
    corrupt = tmp_path / "corrupt.mp3"
    corrupt.write_bytes(b"ID3" + bytes(range(256)) * 4)

    def audio(path) -> dict:
        return {"type": "audio_url", "audio_url": {"url": str(path)}}

    hi = {"type": "text", "text": "hi"}
    bodies = {"ok": [audio(good), hi], "zero-length": [audio(empty), hi], "corrupt": [audio(corrupt), hi]}
    path = write_requests(tmp_path / "requests.jsonl", bodies, 4)
    run_dir = tmp_path / "run"
    run_epd(
        run_dir,
        "+topology=1e1p",
        "transfer=zmq",
        f"model.path={ckpt}",
        "workload=file",
        f"workload.path={path}",
        code=3,
    )
    got = {r["id"]: r for r in read_results(run_dir)["requests"]}
    assert got["ok"]["error"] is None and got["ok"]["output_token_ids"]
    assert "empty.wav" in got["zero-length"]["error"]
    assert "corrupt.mp3" in got["corrupt"]["error"]
