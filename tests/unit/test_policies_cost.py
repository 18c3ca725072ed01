"""What the frontend knows before decoding: token estimates, content hashes, image header sizes."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from PIL import Image

from epd.frontend.chat import to_template_messages
from epd.frontend.probe import MediaProbe
from epd.media import MediaConfig, MediaError
from epd.scheduler import SchedulerConfig
from epd.scheduler.content_hash import ContentHasher
from epd.scheduler.cost import estimate_tokens

CFG = SchedulerConfig()


def local(folder) -> MediaConfig:
    """A media config that lets files in ``folder`` be read."""
    return MediaConfig(allowed_dirs=[str(folder)])


def _png(path, size, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path.read_bytes()


def test_estimates_from_hints_and_defaults():
    assert estimate_tokens("image", {}, CFG) == CFG.item_tokens["image"]
    assert estimate_tokens("image", {"width": 1932, "height": 1092}, CFG) == 2691  # Qwen2.5-VL's 1080p count
    assert estimate_tokens("image", {"num_tokens": 7, "width": 10, "height": 10}, CFG) == 7
    assert estimate_tokens("audio", {"seconds": 10}, CFG) == 250
    assert estimate_tokens("audio", {}, SchedulerConfig(item_tokens={"audio": 33})) == 33
    # 4 s at 2 fps = 8 frames = 4 temporal patches, each of a 448x448 frame's 256 tokens
    assert estimate_tokens("video", {"seconds": 4, "width": 448, "height": 448}, CFG) == 4 * 256
    assert estimate_tokens("video", {"seconds": 4}, CFG) == CFG.item_tokens["video"]  # no frame size


def test_image_processor_gives_exact_counts(tiny_qwen25vl):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_qwen25vl)
    # the tiny checkpoint caps images at 64 tokens: a 4k image is not 10580 tokens to it
    assert estimate_tokens("image", {"width": 3840, "height": 2160}, CFG, processor.image_processor) <= 64
    image = Image.new("RGB", (640, 360))
    out = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[image], return_tensors="pt")
    assert estimate_tokens("image", {"width": 640, "height": 360}, CFG, processor.image_processor) == int(
        out["image_grid_thw"].prod() // 4
    )


def test_content_hash_follows_bytes_not_names(tmp_path):
    data = _png(tmp_path / "a.png", (32, 16))
    (tmp_path / "copy.png").write_bytes(data)
    _png(tmp_path / "b.png", (32, 16), seed=1)
    hasher = ContentHasher(local(tmp_path))
    a = hasher.hash(str(tmp_path / "a.png"))
    assert a == hasher.hash(str(tmp_path / "copy.png")) == hasher.hash(f"file://{tmp_path}/a.png")
    assert a == hasher.hash("data:image/png;base64," + base64.b64encode(data).decode())
    assert a != hasher.hash(str(tmp_path / "b.png"))
    assert hasher.hash("http://host/a.png") == hasher.hash("http://host/a.png") != hasher.hash("http://host/b.png")
    with pytest.raises(MediaError, match="cannot read media file .*missing.png"):
        hasher.hash(str(tmp_path / "missing.png"))
    with pytest.raises(MediaError, match="refused: local media must lie inside media.allowed_dirs"):
        ContentHasher(local(tmp_path / "elsewhere")).hash(str(tmp_path / "a.png"))


def test_content_hash_sees_a_rewritten_file(tmp_path):
    path = tmp_path / "a.png"
    _png(path, (32, 16))
    hasher = ContentHasher(local(tmp_path))
    before = hasher.hash(str(path))
    _png(path, (32, 17), seed=3)
    assert hasher.hash(str(path)) != before


def test_probe_sizes_images_from_their_header(tmp_path):
    data = _png(tmp_path / "a.png", (280, 140))
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    (tmp_path / "a.wav").write_bytes(b"RIFF")  # checked (exists, regular), never decoded here
    _, refs = to_template_messages(
        [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": str(tmp_path / "a.png")}},
                    {"type": "image_url", "image_url": {"url": uri}},
                    {"type": "image_url", "image_url": {"url": "http://h/x.png", "width": 56, "height": 56}},
                    {"type": "image_url", "image_url": {"url": "http://h/y.png"}},
                    {"type": "audio_url", "audio_url": {"url": str(tmp_path / "a.wav"), "seconds": 2}},
                ],
            }
        ]
    )
    probe = MediaProbe(CFG, local(tmp_path), hash_content=True)
    infos = [probe.item("r", i, ref) for i, ref in enumerate(refs)]
    assert [it.est_tokens for it in infos] == [50, 50, 4, CFG.item_tokens["image"], 50]
    assert infos[0].content_hash == infos[1].content_hash is not None
    assert MediaProbe(CFG, local(tmp_path), hash_content=False).item("r", 0, refs[0]).content_hash is None


def test_probe_leaves_bad_content_to_the_encoder(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not an image")
    probe = MediaProbe(CFG, local(tmp_path), hash_content=True)
    for source in ["data:image/png;base64,AAAA", str(tmp_path / "x.png")]:
        assert probe.image_size(source) is None
        _, (ref,) = to_template_messages(
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": source}}]}]
        )
        assert probe.item("r", 0, ref).est_tokens == CFG.item_tokens["image"]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("data:image/png;base64,!!!", "not valid base64"),
        ("/nowhere/x.png", "refused: local media must lie inside media.allowed_dirs"),
        ("{tmp}/missing.png", "cannot read media file"),
        ("{tmp}", "not a regular file"),
        ("http://127.0.0.1/x.png", "not a public address"),
    ],
)
def test_probe_fails_a_bad_source_at_once(source, message, tmp_path):
    probe = MediaProbe(CFG, local(tmp_path), hash_content=False)
    _, (ref,) = to_template_messages(
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": source.format(tmp=tmp_path)}}]}]
    )
    with pytest.raises(MediaError, match=message):
        probe.item("r", 0, ref)
