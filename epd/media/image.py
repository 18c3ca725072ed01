"""Decode images with Pillow (or, for the device path, straight to tensors), from the formats in
``IMAGE_FORMATS`` only.

Pillow's other plugins are not offered untrusted bytes: EPS hands them to Ghostscript, and the
rarely used readers are where its decoding bugs have been.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from epd.media.config import MediaConfig
from epd.media.errors import MediaError, describe, over_limit, short
from epd.media.source import fetch_bytes

if TYPE_CHECKING:
    import torch

MAX_IMAGE_PIXELS = MediaConfig().max_image_pixels
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
"""Pillow format names an image may have (JPEG covers MPO, the multi-picture JPEG of some cameras)."""


def load_image(
    source: str, max_bytes: int | None = None, max_pixels: int | None = None, *, cfg: MediaConfig | None = None
) -> Image.Image:
    """The RGB image at ``source`` (path, ``file://``, ``data:`` or ``http(s)://``), fully decoded.

    Limits and the source policy come from ``cfg`` (default ``MediaConfig()``); ``max_bytes`` /
    ``max_pixels`` override ``cfg.max_bytes`` / ``cfg.max_image_pixels``.
    """
    cfg = cfg or MediaConfig()
    data = fetch_bytes(source, max_bytes, cfg=cfg)
    with _opened(data, source, cfg.max_image_pixels if max_pixels is None else max_pixels) as img:
        return _decoded_rgb(img)


def load_image_tensor(
    source: str, max_bytes: int | None = None, max_pixels: int | None = None, *, cfg: MediaConfig | None = None
) -> torch.Tensor:
    """``load_image``'s pixels as a uint8 tensor [3, H, W] (a view of [H, W, 3] memory), decoded
    straight to the tensor by torchvision where it gives Pillow's pixels (``TENSOR_DECODED``: baseline
    and progressive JPEG, 8-bit PNG), else through Pillow. Same source policy, limits and errors."""
    import torch  # lazily: epd.media stays light for the frontend and workload generators

    cfg = cfg or MediaConfig()
    data = fetch_bytes(source, max_bytes, cfg=cfg)
    with _opened(data, source, cfg.max_image_pixels if max_pixels is None else max_pixels) as img:
        pixels = _torchvision_decode(data, img)
        if pixels is None:  # a format or mode torchvision does not decode as Pillow does: Pillow
            pixels = torch.from_numpy(np.array(_decoded_rgb(img))).permute(2, 0, 1)
        return pixels


TENSOR_DECODED = {"JPEG": ("RGB", "L"), "PNG": ("RGB", "RGBA", "L", "LA", "P", "1")}
"""Pillow format → modes whose torchvision decode equals Pillow's ``convert("RGB")`` (alpha dropped,
palettes expanded, grey replicated); 16-bit PNGs fall back to Pillow (checked after decoding)."""


@contextlib.contextmanager
def _opened(data: bytes, source: str, max_pixels: int) -> Iterator[Image.Image]:
    """The image's header opened by Pillow (no pixel decoded yet) once its size passed ``max_pixels``;
    every failure on the way, or in the caller's decoding inside the block, is a ``MediaError``."""
    label = short(source)
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
            if img.width * img.height > max_pixels:
                size = f"{img.width}x{img.height} ({img.width * img.height} pixels)"
                raise over_limit(f"image {label}", size, "max_image_pixels", max_pixels)
            yield img
    except MediaError:
        raise
    except Image.DecompressionBombError as exc:
        raise MediaError(
            f"image {label} refused by Pillow's PIL.Image.MAX_IMAGE_PIXELS guard: {describe(exc)}"
        ) from exc
    except UnidentifiedImageError as exc:
        formats = ", ".join(IMAGE_FORMATS)
        raise MediaError(f"cannot decode image {label}: not an image in a format epd reads ({formats})") from exc
    except Exception as exc:  # any decoder failure on bad bytes fails this item, never the process
        raise MediaError(f"cannot decode image {label}: {describe(exc)}") from exc


def _decoded_rgb(img: Image.Image) -> Image.Image:
    img.load()  # decode now: a truncated file fails here, not inside the processor
    return img.convert("RGB")


def _torchvision_decode(data: bytes, img: Image.Image) -> torch.Tensor | None:
    """uint8 [3, H, W] from torchvision's decoder, or None where it would not give Pillow's pixels."""
    if img.mode not in TENSOR_DECODED.get(img.format or "", ()):
        return None
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg, decode_png

    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    decode = decode_jpeg if img.format == "JPEG" else decode_png
    pixels = decode(encoded, mode=ImageReadMode.RGB)
    if pixels.dtype != torch.uint8 or tuple(pixels.shape) != (3, img.height, img.width):
        return None  # 16-bit samples (or a decoder that disagrees on the size): Pillow's conversion
    return pixels


def header_size(data: bytes | BinaryIO) -> tuple[int, int] | None:
    """(width, height) from the header of an image (bytes or an open file), or None if Pillow
    cannot identify it as one of ``IMAGE_FORMATS``; no pixel is decoded."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data, formats=IMAGE_FORMATS) as img:
            return img.size
    except Exception:  # not an image epd reads: the decoder reports what is wrong with it
        return None
