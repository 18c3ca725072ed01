"""Content hashes of media sources: what ``cache_affinity`` and the encoders' embedding cache key on.

Local files (paths and ``file://``) hash their bytes, so a copy under another name still matches;
``data:`` URIs hash their decoded payload (the same bytes as a file hash the same); ``http(s)`` URLs
hash the URL itself (the frontend never fetches). A file's hash is remembered by (path, size, mtime), so a repeated file is read once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from urllib.parse import unquote, urlparse

DIGEST_BYTES = 16
CHUNK = 1 << 20


class ContentHasher:
    """``hash(source)`` → hex digest (or None for an unreadable file: the encoder reports that error)."""

    def __init__(self, max_files: int = 65536) -> None:
        self.max_files = max_files
        self._files: dict[tuple[str, int, int], str] = {}

    def hash(self, source: str) -> str | None:
        if source.startswith("data:"):
            return _digest(b"bytes", _data_payload(source))
        if source.startswith(("http://", "https://")):
            return _digest(b"url", source.encode())
        path = unquote(urlparse(source).path) if source.startswith("file://") else source
        try:
            st = os.stat(path)
            key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
            if key not in self._files:
                if len(self._files) >= self.max_files:
                    self._files.clear()
                self._files[key] = _file_digest(path)
            return self._files[key]
        except OSError:
            return None


def _digest(kind: bytes, data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES, person=kind.ljust(16, b"\0")).hexdigest()


def _data_payload(uri: str) -> bytes:
    header, _, payload = uri.partition(",")
    if header.endswith(";base64"):
        try:
            return base64.b64decode(payload)
        except (binascii.Error, ValueError):
            return payload.encode()  # the encoder reports the bad payload; any stable key will do
    return unquote(payload).encode("latin-1", errors="replace")


def _file_digest(path: str) -> str:
    h = hashlib.blake2b(digest_size=DIGEST_BYTES, person=b"bytes".ljust(16, b"\0"))
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
