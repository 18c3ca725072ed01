"""The oracle with the processors' media math on the encoder's device (``encoder.preprocess_device=
device``): epd's greedy tokens still equal transformers' ``generate`` with the host processor.

On the CPU the device path is torch on CPU tensors; on a GPU (``gpu`` tests) the images and videos
are resized, normalised and patchified on the GPU, the model runs in float32 there, and the tokens
must still equal the CPU reference's.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from epd.bench.preprocess import photo
from epd.media.synth import write_test_audio, write_test_video
from tests.conftest import read_results, run_epd, write_requests
from tests.integration.oracle_utils import reference_tokens
from tests.integration.test_oracle_families import omni_requests, vision_requests
from tests.kernel_helpers import gpu

MAX_TOKENS = 8
FAMILIES = {"qwen2_5_vl": vision_requests, "qwen3_vl": vision_requests, "qwen3_omni": omni_requests}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("prep-media")
    Image.fromarray(photo(130, 90, seed=4)).save(d / "i.png")
    write_test_video(d / "v1.mp4", 2.0, 8, (160, 120), seed=1)
    write_test_video(d / "v2.mp4", 1.0, 10, (128, 96), seed=2)
    write_test_audio(d / "a1.wav", 1.5, 16000, seed=1)
    write_test_audio(d / "a2.flac", 0.8, 22050, fmt="flac", seed=2)
    jpeg = Image.fromarray(np.random.default_rng(5).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    jpeg.save(d / "noise.jpg", quality=85)  # decoded by torchvision on the device path, Pillow on the host
    return d


@pytest.fixture(scope="module", params=list(FAMILIES))
def case(request, media, tmp_path_factory):
    from epd.tiny import write_tiny

    family = request.param
    ckpt = write_tiny(family, tmp_path_factory.mktemp(family) / "ckpt")
    bodies = FAMILIES[family](media)
    bodies["jpeg"] = [
        {"type": "image_url", "image_url": {"url": str(media / "noise.jpg")}},
        {"type": "text", "text": "?"},
    ]
    path = write_requests(tmp_path_factory.mktemp(f"{family}-req") / "r.jsonl", bodies, MAX_TOKENS)
    return family, ckpt, path, reference_tokens(ckpt, path)


def run_and_compare(tmp_path, case, media, *extra: str) -> None:
    family, ckpt, path, reference = case
    run_dir = tmp_path / "run"
    run_epd(
        run_dir,
        f"model.path={ckpt}",
        "workload=file",
        f"workload.path={path}",
        f'media.allowed_dirs=["{media}","{path.parent}"]',
        "encoder.preprocess_device=device",
        *extra,
    )
    results = read_results(run_dir)
    assert results["config"]["encoder"]["preprocess_device"] == "device"
    got = {r["id"]: r for r in results["requests"]}
    assert set(got) == set(reference)
    for rid, ref in reference.items():
        assert got[rid]["error"] is None, f"{family}/{rid}: {got[rid]['error']}"
        assert got[rid]["output_token_ids"] == ref, f"{family}/{rid} with the device path"


@pytest.mark.slow
def test_device_path_equals_transformers_on_cpu(tmp_path, case, media):
    run_and_compare(tmp_path, case, media)


@pytest.mark.slow
@gpu
def test_device_path_on_gpu_equals_transformers(tmp_path, case, media):
    run_and_compare(tmp_path, case, media, "device=cuda", "model.dtype=float32")
