"""Decode images with Pillow, from the formats in ``IMAGE_FORMATS`` only.

Pillow's other plugins are not offered untrusted bytes: EPS hands them to Ghostscript, and the
rarely used readers are where its decoding bugs have been.
"""

from __future__ import annotations

import io
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from epd.media.config import MediaConfig
from epd.media.errors import MediaError, describe, over_limit, short
from epd.media.source import fetch_bytes

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
    max_pixels = cfg.max_image_pixels if max_pixels is None else max_pixels
    data = fetch_bytes(source, max_bytes, cfg=cfg)
    label = short(source)
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
            if img.width * img.height > max_pixels:
                size = f"{img.width}x{img.height} ({img.width * img.height} pixels)"
                raise over_limit(f"image {label}", size, "max_image_pixels", max_pixels)
            img.load()  # decode now: a truncated file fails here, not inside the processor
            return img.convert("RGB")
    except MediaError:
        raise
    except Image.DecompressionBombError as exc:
        raise MediaError(
            f"image {label} refused by Pillow's PIL.Image.MAX_IMAGE_PIXELS guard: {describe(exc)}"
        ) from exc
    except UnidentifiedImageError as exc:
        formats = ", ".join(IMAGE_FORMATS)
        raise MediaError(f"cannot decode image {label}: not an image in a format epd reads ({formats})") from exc
    except Exception as exc:  # any Pillow failure on bad bytes fails this item, never the process
        raise MediaError(f"cannot decode image {label}: {describe(exc)}") from exc


def header_size(data: bytes | BinaryIO) -> tuple[int, int] | None:
    """(width, height) from the header of an image (bytes or an open file), or None if Pillow
    cannot identify it as one of ``IMAGE_FORMATS``; no pixel is decoded."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data, formats=IMAGE_FORMATS) as img:
            return img.size
    except Exception:  # not an image epd reads: the decoder reports what is wrong with it
        return None
