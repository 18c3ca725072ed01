"""Media sources and decoding (images now)."""

from epd.media.errors import MediaError
from epd.media.fetch import fetch_bytes
from epd.media.image import load_image

__all__ = ["MediaError", "fetch_bytes", "load_image"]
