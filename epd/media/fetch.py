"""Fetch media bytes from a local path, a ``file://`` URL or a ``data:`` URI."""

from __future__ import annotations

import base64
import binascii
import os
from urllib.parse import unquote, urlparse

from epd.media.errors import MediaError

DEFAULT_MAX_BYTES = 256 << 20


def fetch_bytes(source: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The raw bytes behind ``source``; ``MediaError`` names the source and what went wrong."""
    if source.startswith("data:"):
        return _data_uri(source, max_bytes)
    if source.startswith(("http://", "https://")):
        raise MediaError(f"{_short(source)}: http(s) media is not supported yet; use a local path or data: URI")
    path = unquote(urlparse(source).path) if source.startswith("file://") else source
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise MediaError(f"cannot read media file {path!r}: {exc.strerror or exc}") from exc
    if size > max_bytes:
        raise MediaError(f"media file {path!r} is {size} bytes, over the limit of {max_bytes} bytes")
    with open(path, "rb") as f:
        return f.read()


def _data_uri(uri: str, max_bytes: int) -> bytes:
    header, sep, payload = uri.partition(",")
    if not sep:
        raise MediaError(f"malformed data: URI {_short(uri)}: no ',' before the payload")
    if len(payload) * 3 // 4 > max_bytes:
        raise MediaError(f"data: URI payload is over the limit of {max_bytes} bytes")
    if header.endswith(";base64"):
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MediaError(f"data: URI {_short(uri)} is not valid base64: {exc}") from exc
    return unquote(payload).encode("latin-1")


def _short(source: str) -> str:
    return source if len(source) <= 64 else source[:61] + "..."
