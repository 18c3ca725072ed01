"""Media sources and decoding for every modality: images, video (any backend), audio.

Sources: local path, ``file://``, ``data:`` and ``http(s)://``, resolved and opened only by
``epd.media.source`` under the policy in ``MediaConfig`` (``allowed_dirs``, ``allow_http``,
``allow_private_addresses``, ``max_redirects``, ``max_bytes``). Every failure is a ``MediaError``
that names the item and what to fix (for a broken limit, the ``media.*`` key to raise).
``epd.media.synth`` writes deterministic test media.
"""

from epd.media.audio import AudioClip, load_audio
from epd.media.config import MediaConfig
from epd.media.errors import MediaError
from epd.media.image import load_image
from epd.media.sampling import FrameSampling
from epd.media.source import SourceInfo, check_source, content_digest, fetch_bytes, image_size
from epd.media.video import VideoClip, load_video, load_video_audio
from epd.media.video_backends import installed_backends

__all__ = [
    "AudioClip",
    "FrameSampling",
    "MediaConfig",
    "MediaError",
    "SourceInfo",
    "VideoClip",
    "check_source",
    "content_digest",
    "fetch_bytes",
    "image_size",
    "installed_backends",
    "load_audio",
    "load_image",
    "load_video",
    "load_video_audio",
]
