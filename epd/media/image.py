"""Decode images with Pillow."""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from epd.media.errors import MediaError
from epd.media.fetch import DEFAULT_MAX_BYTES, _short, fetch_bytes

MAX_IMAGE_PIXELS = 8192 * 8192


def load_image(source: str, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """The RGB image at ``source`` (path, ``file://`` or ``data:``), fully decoded."""
    data = fetch_bytes(source, max_bytes)
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > max_pixels:
                raise MediaError(
                    f"image {_short(source)} is {img.width}x{img.height}, over the limit of {max_pixels} pixels"
                )
            img.load()  # decode now: a truncated file fails here, not inside the processor
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise MediaError(f"cannot decode image {_short(source)}: {exc}") from exc
