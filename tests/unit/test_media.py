"""Media sources, config and image decoding: every failure is a MediaError that names the source.

The source policy itself (allowed folders, non-regular files, http hops) is tested in
test_media_policy.py; here every local file lies in an allowed folder (``local``).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from epd.media import MediaConfig, MediaError, fetch_bytes, load_image


def local(folder, **kwargs) -> MediaConfig:
    """A config that lets media in ``folder`` be read."""
    return MediaConfig(allowed_dirs=[str(folder)], **kwargs)


@pytest.fixture
def png(tmp_path):
    path = tmp_path / "x y.png"
    Image.new("RGB", (30, 20), (10, 20, 30)).save(path)
    return path


def test_sources_agree(png):
    data = png.read_bytes()
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    cfg = local(png.parent)
    assert fetch_bytes(str(png), cfg=cfg) == fetch_bytes(png.as_uri(), cfg=cfg) == fetch_bytes(uri) == data
    assert fetch_bytes("file://localhost" + str(png), cfg=cfg) == data
    img = load_image(png.as_uri(), cfg=cfg)
    assert img.size == (30, 20) and img.mode == "RGB" and img.getpixel((0, 0)) == (10, 20, 30)


def test_grayscale_and_alpha_become_rgb(tmp_path):
    for mode in ("L", "RGBA", "P"):
        path = tmp_path / f"{mode}.png"
        Image.new(mode, (8, 8)).save(path)
        assert load_image(str(path), cfg=local(tmp_path)).mode == "RGB"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{tmp}/no/such/file.png", r"cannot read media file '.*/no/such/file\.png': No such file or directory"),
        ("/no/such/file.png", r"media file '/no/such/file\.png' refused: .* inside media.allowed_dirs"),
        ("no/such/file.png", "is relative; give an absolute path"),
        ("file://host/a.png", "names host 'host'"),
        ("ftp://host/a.png", "unsupported scheme"),
        ("data:image/png;base64,@@@", "not valid base64"),
        ("data:image/png;base64", "no ','"),
    ],
)
def test_bad_sources(source, message, tmp_path):
    with pytest.raises(MediaError, match=message):
        load_image(source.format(tmp=tmp_path), cfg=local(tmp_path))


def test_limits(png, tmp_path):
    with pytest.raises(MediaError, match=r"is 91 bytes, over media.max_bytes=10$"):
        fetch_bytes(str(png), max_bytes=10, cfg=local(tmp_path))
    with pytest.raises(MediaError, match=r"30x20 \(600 pixels\), over media.max_image_pixels=100$"):
        load_image(str(png), max_pixels=100, cfg=local(tmp_path))
    cfg = local(tmp_path, max_bytes=90, max_image_pixels=599)
    with pytest.raises(MediaError, match="over media.max_bytes=90"):
        load_image(png.as_uri(), cfg=cfg)
    uri = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    with pytest.raises(MediaError, match="data: URI payload is 91 bytes, over media.max_bytes=50"):
        fetch_bytes(uri, cfg=MediaConfig(max_bytes=50))
    with pytest.raises(MediaError, match="over media.max_image_pixels=599"):
        load_image(uri, cfg=MediaConfig(max_image_pixels=599))
    with pytest.raises(MediaError, match="data: URI payload is 12 bytes, over media.max_bytes=11"):
        fetch_bytes("data:text/plain,hello%20world!", cfg=MediaConfig(max_bytes=11))
    assert load_image(uri, cfg=MediaConfig(max_bytes=91, max_image_pixels=600)).size == (30, 20)


def test_http_disabled():
    with pytest.raises(MediaError, match=r"http\(s\) media is disabled \(media.allow_http=false\)"):
        fetch_bytes("https://example.com/a.png", cfg=MediaConfig(allow_http=False))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_bytes", 0),
        ("max_bytes", 1.5),
        ("max_image_pixels", -1),
        ("max_video_seconds", 0),
        ("max_audio_seconds", "60"),
        ("fetch_timeout_s", 0.0),
        ("video_backend", "opencv"),
        ("video_fps", 0),
        ("video_min_frames", 0),
        ("video_max_frames", 2.5),
        ("allow_http", "yes"),
        ("allow_private_addresses", 1),
        ("max_redirects", -1),
        ("max_redirects", 1.0),
        ("allowed_dirs", "/tmp"),
        ("allowed_dirs", ["relative/dir"]),
        ("allowed_dirs", [3]),
    ],
)
def test_config_rejects(key, value):
    with pytest.raises(ValueError, match=f"media.{key}"):
        MediaConfig(**{key: value})


def test_config_defaults_and_order():
    cfg = MediaConfig(video_fps=1, video_min_frames=2, video_max_frames=8, max_video_seconds=60)
    assert cfg.video_backend == "auto" and cfg.allow_http and cfg.max_audio_seconds > 0
    assert cfg.allowed_dirs is None and not cfg.allow_private_addresses and cfg.max_redirects == 3
    assert MediaConfig(allowed_dirs=(Path("/a"), "/b")).allowed_dirs == ["/a", "/b"]
    with pytest.raises(ValueError, match="media.video_min_frames=9 is above media.video_max_frames=8"):
        MediaConfig(video_min_frames=9, video_max_frames=8)
    with pytest.raises(TypeError):
        MediaConfig(1)  # keyword-only


def test_truncated_and_garbage(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 0, 0)).save(buf, format="JPEG")
    (tmp_path / "t.jpg").write_bytes(buf.getvalue()[:200])
    (tmp_path / "g.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "eps.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n")  # Ghostscript's
    for name in ("t.jpg", "g.png", "eps.png"):
        with pytest.raises(MediaError, match="cannot decode image") as err:
            load_image(str(tmp_path / name), cfg=local(tmp_path))
        assert " at 0x" not in str(err.value) and "BytesIO" not in str(err.value)  # no object reprs
