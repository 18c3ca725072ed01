"""Images decoded straight to tensors (``load_image_tensor``) for the device path: Pillow's pixels,
the same source policy, limits and errors as ``load_image``; the encoder's decoder picks it."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from epd.bench.preprocess import photo
from epd.encoder.decode import MediaDecoder
from epd.media import MediaConfig, MediaError, load_image
from epd.media.image import _torchvision_decode, load_image_tensor
from epd.models import detect_family
from epd.protocol import EncodeItem
from epd.tiny import cached_tiny

RGBA = np.concatenate([photo(53, 37, seed=1), np.full((37, 53, 1), 200, np.uint8)], axis=-1)


def saved(tmp_path, name: str, image: Image.Image, **kwargs) -> str:
    path = tmp_path / name
    image.save(path, **kwargs)
    return str(path)


def png16(path, pixels: np.ndarray) -> str:
    """A 16-bit RGB PNG (Pillow cannot write one): torchvision decodes it to uint16, so Pillow must."""
    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))  # fmt: skip
    return str(path)


def cases(tmp_path) -> dict[str, str]:
    rgb = Image.fromarray(RGBA[..., :3])
    return {
        "jpeg": saved(tmp_path, "a.jpg", rgb, quality=90),
        "jpeg-progressive": saved(tmp_path, "p.jpg", rgb, progressive=True),
        "jpeg-4:4:4": saved(tmp_path, "s.jpg", rgb, subsampling=0),
        "jpeg-grey": saved(tmp_path, "g.jpg", rgb.convert("L")),
        "jpeg-cmyk": saved(tmp_path, "c.jpg", rgb.convert("CMYK")),
        "png": saved(tmp_path, "a.png", rgb),
        "png-rgba": saved(tmp_path, "rgba.png", Image.fromarray(RGBA)),
        "png-la": saved(tmp_path, "la.png", Image.fromarray(RGBA).convert("LA")),
        "png-palette": saved(tmp_path, "p.png", rgb.convert("P", palette=Image.ADAPTIVE), transparency=3),
        "png-1bit": saved(tmp_path, "b.png", rgb.convert("1")),
        "png-16bit": png16(tmp_path / "16.png", np.random.default_rng(2).integers(0, 65536, (9, 11, 3), np.uint16)),
        "webp": saved(tmp_path, "a.webp", rgb, lossless=True),
        "gif": saved(tmp_path, "a.gif", rgb),
        "bmp": saved(tmp_path, "a.bmp", rgb),
        "tiff": saved(tmp_path, "a.tiff", rgb),
    }


def test_tensor_pixels_equal_pillows(tmp_path):
    cfg = MediaConfig(allowed_dirs=[str(tmp_path)])
    for name, path in cases(tmp_path).items():
        want = torch.from_numpy(np.array(load_image(path, cfg=cfg))).permute(2, 0, 1)
        got = load_image_tensor(path, cfg=cfg)
        assert got.dtype == torch.uint8 and got.shape == want.shape, name
        assert torch.equal(got, want), f"{name}: {(got != want).sum()} values differ"


def test_jpeg_and_8bit_png_skip_pillows_decoder(tmp_path):
    """The formats that pay go through torchvision (the rest fall back to Pillow, checked above)."""
    direct = {"jpeg", "jpeg-progressive", "jpeg-4:4:4", "jpeg-grey", "png", "png-rgba", "png-la", "png-palette", "png-1bit"}  # fmt: skip
    for name, path in cases(tmp_path).items():
        data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            assert (_torchvision_decode(data, img) is not None) == (name in direct), name


def outcome(load, source: str) -> int | str:
    """The decoded pixels' sum (layout-free), or ``refused``."""
    try:
        return int(np.asarray(load(source), dtype=np.int64).sum())
    except MediaError:
        return "refused"


def test_policy_limits_and_errors_are_load_images(tmp_path):
    cfg = MediaConfig(allowed_dirs=[str(tmp_path)])
    path = cases(tmp_path)["jpeg"]
    with pytest.raises(MediaError, match="inside media.allowed_dirs"):
        load_image_tensor(path)  # no allowed folder
    with pytest.raises(MediaError, match="max_image_pixels"):
        load_image_tensor(path, cfg=MediaConfig(allowed_dirs=[str(tmp_path)], max_image_pixels=100))
    with pytest.raises(MediaError, match="max_bytes"):
        load_image_tensor(path, max_bytes=64, cfg=cfg)
    data = Path(path).read_bytes()
    for name, payload in [("cut.jpg", data[: len(data) // 2]), ("junk.jpg", data[:200] + b"\x00" * 500)]:
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(MediaError, match=f"cannot decode image .*{name}"):
            load_image_tensor(str(tmp_path / name), cfg=cfg)
        with pytest.raises(MediaError, match=f"cannot decode image .*{name}"):
            load_image(str(tmp_path / name), cfg=cfg)
    for name in ("jpeg", "png"):  # cut anywhere: both loaders refuse, or both read the same pixels
        data = Path(cases(tmp_path)[name]).read_bytes()
        for cut in (len(data) - 1, len(data) - 12, len(data) - 400, 300):
            uri = f"data:image/{name};base64," + base64.b64encode(data[:cut]).decode()
            assert outcome(load_image, uri) == outcome(load_image_tensor, uri), f"{name} cut at {cut}"
    (tmp_path / "text.png").write_bytes(b"not an image at all")
    with pytest.raises(MediaError, match="not an image in a format epd reads"):
        load_image_tensor(str(tmp_path / "text.png"), cfg=cfg)


def test_decoder_hands_tensors_to_the_device_path(tmp_path):
    """With the media math on the device, images reach ``preprocess`` as uint8 tensors, sized the same."""
    ckpt = cached_tiny("qwen2_5_vl")
    encoder = detect_family(ckpt).load_encoder(ckpt, False, torch.device("cpu"), torch.float32)
    path = cases(tmp_path)["jpeg"]
    msg = EncodeItem(request_id="r", index=0, modality="image", source=path, language_rank=0)
    decoder = MediaDecoder(encoder, MediaConfig(allowed_dirs=[str(tmp_path)]))
    host = decoder.decode(msg)
    assert isinstance(host.data, Image.Image)
    encoder.set_preprocess_device("device")
    dev = decoder.decode(msg)
    assert isinstance(dev.data, torch.Tensor) and dev.data.shape == (3, 37, 53)
    assert decoder.num_tokens(dev) == decoder.num_tokens(host) > 0
    assert torch.equal(torch.from_numpy(np.array(host.data)).permute(2, 0, 1), dev.data)
    uri = "data:image/jpeg;base64," + base64.b64encode(Path(path).read_bytes()).decode()
    via_uri = EncodeItem(request_id="r", index=1, modality="image", source=uri, language_rank=0)
    assert torch.equal(decoder.decode(via_uri).data, dev.data)
