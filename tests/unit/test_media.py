"""Media sources and image decoding: every failure is a MediaError that names the source."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from epd.media import MediaError, fetch_bytes, load_image


@pytest.fixture
def png(tmp_path):
    path = tmp_path / "x y.png"
    Image.new("RGB", (30, 20), (10, 20, 30)).save(path)
    return path


def test_sources_agree(png):
    data = png.read_bytes()
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    assert fetch_bytes(str(png)) == fetch_bytes(png.as_uri()) == fetch_bytes(uri) == data
    img = load_image(png.as_uri())
    assert img.size == (30, 20) and img.mode == "RGB" and img.getpixel((0, 0)) == (10, 20, 30)


def test_grayscale_and_alpha_become_rgb(tmp_path):
    for mode in ("L", "RGBA", "P"):
        path = tmp_path / f"{mode}.png"
        Image.new(mode, (8, 8)).save(path)
        assert load_image(str(path)).mode == "RGB"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("/no/such/file.png", "cannot read media file"),
        ("data:image/png;base64,@@@", "not valid base64"),
        ("data:image/png;base64", "no ','"),
        ("https://example.com/a.png", "http"),
    ],
)
def test_bad_sources(source, message):
    with pytest.raises(MediaError, match=message):
        load_image(source)


def test_limits(png, tmp_path):
    with pytest.raises(MediaError, match="over the limit of 10 bytes"):
        fetch_bytes(str(png), max_bytes=10)
    with pytest.raises(MediaError, match="30x20, over the limit of 100 pixels"):
        load_image(str(png), max_pixels=100)


def test_truncated_and_garbage(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 0, 0)).save(buf, format="JPEG")
    (tmp_path / "t.jpg").write_bytes(buf.getvalue()[:200])
    (tmp_path / "g.png").write_bytes(b"\x89PNG not really")
    for name in ("t.jpg", "g.png"):
        with pytest.raises(MediaError, match="cannot decode image"):
            load_image(str(tmp_path / name))
