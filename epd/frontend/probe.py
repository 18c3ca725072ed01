"""What the frontend learns about a media item without decoding it: its content hash and its size.

Both feed the encoder-assignment policy (``cache_affinity`` keys on the hash, ``least_loaded`` and
``split`` weigh items by estimated tokens) and the hash lets an encoder serve the item from its
embedding cache. Only headers are parsed: an image's size comes from its first bytes.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from typing import Any
from urllib.parse import unquote, urlparse

from epd.scheduler import MediaItemInfo, SchedulerConfig
from epd.scheduler.content_hash import ContentHasher
from epd.scheduler.cost import estimate_tokens

MAX_REMEMBERED = 65536


class MediaProbe:
    """``item(request_id, index, ref)`` → ``MediaItemInfo`` with ``est_tokens`` (and ``content_hash``
    when ``hash_content``)."""

    def __init__(self, cfg: SchedulerConfig, hash_content: bool, image_processor: Any = None) -> None:
        self.cfg = cfg
        self.hasher = ContentHasher() if hash_content else None
        self.image_processor = image_processor
        self._sizes: dict[tuple[str, int, int], tuple[int, int] | None] = {}

    def item(self, request_id: str, index: int, ref: Any) -> MediaItemInfo:
        hints = dict(ref.hints)
        if ref.modality == "image" and not ("width" in hints and "height" in hints):
            size = self.image_size(ref.source)
            if size is not None:
                hints["width"], hints["height"] = size
        return MediaItemInfo(
            request_id=request_id,
            index=index,
            modality=ref.modality,
            source=ref.source,
            est_tokens=estimate_tokens(ref.modality, hints, self.cfg, self.image_processor),
            content_hash=self.hasher.hash(ref.source) if self.hasher is not None else None,
        )

    def image_size(self, source: str) -> tuple[int, int] | None:
        """(width, height) from the image's header, for local files and ``data:`` URIs; None otherwise."""
        from PIL import Image

        try:
            if source.startswith("data:"):
                header, _, payload = source.partition(",")
                if not header.endswith(";base64"):
                    return None
                with Image.open(io.BytesIO(base64.b64decode(payload))) as img:
                    return img.size
            if source.startswith(("http://", "https://")):
                return None
            path = unquote(urlparse(source).path) if source.startswith("file://") else source
            st = os.stat(path)
            key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
            if key not in self._sizes:
                if len(self._sizes) >= MAX_REMEMBERED:
                    self._sizes.clear()
                with Image.open(path) as img:
                    self._sizes[key] = img.size
            return self._sizes[key]
        except (OSError, ValueError, binascii.Error, Image.DecompressionBombError):
            return None  # the encoder reports what is wrong with it
