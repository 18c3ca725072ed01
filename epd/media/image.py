"""Decode images with Pillow."""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from epd.media.config import MediaConfig
from epd.media.errors import MediaError, over_limit, short
from epd.media.fetch import fetch_bytes

MAX_IMAGE_PIXELS = MediaConfig().max_image_pixels


def load_image(
    source: str, max_bytes: int | None = None, max_pixels: int | None = None, *, cfg: MediaConfig | None = None
) -> Image.Image:
    """The RGB image at ``source`` (path, ``file://``, ``data:`` or ``http(s)://``), fully decoded.

    Limits come from ``cfg`` (default ``MediaConfig()``); ``max_bytes`` / ``max_pixels`` override
    ``cfg.max_bytes`` / ``cfg.max_image_pixels``.
    """
    cfg = cfg or MediaConfig()
    max_pixels = cfg.max_image_pixels if max_pixels is None else max_pixels
    data = fetch_bytes(source, max_bytes, cfg=cfg)
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > max_pixels:
                size = f"{img.width}x{img.height} ({img.width * img.height} pixels)"
                raise over_limit(f"image {short(source)}", size, "max_image_pixels", max_pixels)
            img.load()  # decode now: a truncated file fails here, not inside the processor
            return img.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise MediaError(f"image {short(source)} refused by Pillow's PIL.Image.MAX_IMAGE_PIXELS guard: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, MediaError):
            raise
        raise MediaError(f"cannot decode image {short(source)}: {exc}") from exc
