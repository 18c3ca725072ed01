"""What the frontend learns about a media item without decoding it: its content hash and its size.

Both feed the encoder-assignment policy (``cache_affinity`` keys on the hash, ``least_loaded`` and
``split`` weigh items by estimated tokens) and the hash lets an encoder serve the item from its
embedding cache. Only headers are parsed: an image's size comes from its first bytes. Every source
is checked first under the media policy (``epd.media.source``), so a refused, missing, non-regular
or oversized local file, a malformed ``data:`` URI or a refused URL fails its request here, at
once, and nothing here can block (no read of a pipe or device, no network).
"""

from __future__ import annotations

from typing import Any

from epd.media.config import MediaConfig
from epd.media.source import SourceInfo, check_source, image_size
from epd.scheduler import MediaItemInfo, SchedulerConfig
from epd.scheduler.content_hash import ContentHasher
from epd.scheduler.cost import estimate_tokens

MAX_REMEMBERED = 65536


class MediaProbe:
    """``item(request_id, index, ref)`` → ``MediaItemInfo`` with ``est_tokens`` (and ``content_hash``
    when ``hash_content``); ``MediaError`` for a source the encoders would refuse anyway."""

    def __init__(
        self, cfg: SchedulerConfig, media: MediaConfig, hash_content: bool, image_processor: Any = None
    ) -> None:
        self.cfg = cfg
        self.media = media
        self.hasher = ContentHasher(media) if hash_content else None
        self.image_processor = image_processor
        self._sizes: dict[tuple[str, int, int], tuple[int, int] | None] = {}

    def item(self, request_id: str, index: int, ref: Any) -> MediaItemInfo:
        info = check_source(ref.source, self.media)
        hints = dict(ref.hints)
        if ref.modality == "image" and not ("width" in hints and "height" in hints):
            size = self.image_size(ref.source, info)
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

    def image_size(self, source: str, info: SourceInfo | None = None) -> tuple[int, int] | None:
        """(width, height) from the image's header for local files and ``data:`` URIs; None for http(s)
        or content that is no image (the encoder reports that). ``MediaError`` for a refused source."""
        info = info or check_source(source, self.media)
        if info.kind != "file":
            return image_size(source, self.media)
        key = (info.path or "", info.size or 0, info.mtime_ns or 0)
        if key not in self._sizes:
            if len(self._sizes) >= MAX_REMEMBERED:
                self._sizes.clear()
            self._sizes[key] = image_size(source, self.media)
        return self._sizes[key]
