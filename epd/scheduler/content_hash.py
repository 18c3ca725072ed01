"""Content hashes of media sources: what ``cache_affinity`` and the encoders' embedding cache key on.

Local files (paths and ``file://``) hash their bytes, so a copy under another name still matches;
``data:`` URIs hash their decoded payload (the same bytes as a file hash the same); ``http(s)`` URLs
hash the URL itself (the frontend never fetches). Sources are read only through
``epd.media.source`` under the media policy (allowed folders, regular files, ``media.max_bytes``),
so hashing never blocks on a device or pipe and never reads past the limit. A file's hash is
remembered by (real path, size, mtime), so a repeated file is read once.
"""

from __future__ import annotations

from epd.media.config import MediaConfig
from epd.media.source import DIGEST_BYTES, check_source, content_digest

__all__ = ["DIGEST_BYTES", "ContentHasher"]


class ContentHasher:
    """``hash(source)`` → hex digest; ``MediaError`` for a source the policy refuses or that cannot be read."""

    def __init__(self, media: MediaConfig | None = None, max_files: int = 65536) -> None:
        self.media = media or MediaConfig()
        self.max_files = max_files
        self._files: dict[tuple[str, int, int], str] = {}

    def hash(self, source: str) -> str:
        info = check_source(source, self.media)  # cheap: open + fstat for a file
        if info.kind != "file":
            return content_digest(source, self.media)
        assert info.path is not None and info.size is not None and info.mtime_ns is not None
        key = (info.path, info.size, info.mtime_ns)
        if key not in self._files:
            if len(self._files) >= self.max_files:
                self._files.clear()
            self._files[key] = content_digest(source, self.media)
        return self._files[key]
