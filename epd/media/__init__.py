"""Media sources and decoding for every modality: images, video (any backend), audio.

Sources: local path, ``file://``, ``data:`` and ``http(s)://`` (``fetch_bytes``). Every failure is
a ``MediaError`` that names the item and, for a broken limit, the ``media.*`` key to raise.
``epd.media.synth`` writes deterministic test media.
"""

from epd.media.audio import AudioClip, load_audio
from epd.media.config import MediaConfig
from epd.media.errors import MediaError
from epd.media.fetch import fetch_bytes
from epd.media.image import load_image
from epd.media.sampling import FrameSampling
from epd.media.video import VideoClip, load_video, load_video_audio
from epd.media.video_backends import installed_backends

__all__ = [
    "AudioClip",
    "FrameSampling",
    "MediaConfig",
    "MediaError",
    "VideoClip",
    "fetch_bytes",
    "installed_backends",
    "load_audio",
    "load_image",
    "load_video",
    "load_video_audio",
]
