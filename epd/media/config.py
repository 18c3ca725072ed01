"""``MediaConfig``: limits, sources and decoding choices for every media item an encoder loads."""

from __future__ import annotations

import os
from dataclasses import dataclass

VIDEO_BACKENDS = ("auto", "pyav", "decord", "torchcodec")


@dataclass(kw_only=True)
class MediaConfig:
    """Per-item limits and decoding options (the ``media`` config group).

    Every limit a media item breaks raises ``MediaError`` naming the limit, the item's value and the
    key to raise, e.g. ``video x.mp4 is 95.0 s long, over media.max_video_seconds=60``.
    """

    max_bytes: int = 256 << 20
    """Largest encoded item (file, data: payload or http body) in bytes."""
    max_image_pixels: int = 8192 * 8192
    """Largest image, width x height."""
    max_video_seconds: float = 600.0
    """Longest video (frames / average fps)."""
    max_audio_seconds: float = 600.0
    """Longest audio clip, including the audio track of a video."""
    fetch_timeout_s: float = 30.0
    """Seconds one http(s) fetch may take: connecting, each read and the whole download."""
    video_backend: str = "auto"
    """``auto`` (first installed of torchcodec, decord, pyav), ``pyav``, ``decord`` or ``torchcodec``."""
    video_fps: float | None = None
    """Frames kept per second of video; None: the checkpoint's video processor config."""
    video_min_frames: int | None = None
    """Fewest frames kept per video; None: the checkpoint's video processor config."""
    video_max_frames: int | None = None
    """Most frames kept per video; None: the checkpoint's video processor config."""
    use_audio_in_video: bool = False
    """Send a video's audio track with it, interleaved by time (families that take it: Qwen3-Omni)."""
    allow_http: bool = True
    """Whether http:// and https:// sources may be fetched."""
    allowed_dirs: list[str] | None = None
    """Folders local media (paths and ``file://``) may be read from; a file is inside one when its real
    path (symlinks and ``..`` resolved) is. ``None`` means "not filled in yet": the entry point fills it
    before any process starts (``epd.run``: the workload file's folder and the run directory). Inside
    the media layer ``None`` and ``[]`` both mean no local files at all."""
    allow_private_addresses: bool = False
    """Whether http(s) media may come from loopback, private, link-local, multicast, reserved or
    unspecified addresses (IPv4 and IPv6, IPv4-mapped IPv6 too); every address a host name resolves
    to is checked, at every redirect hop."""
    max_redirects: int = 3
    """Most http redirects followed for one item (each hop is checked like the first URL); 0: none."""

    def __post_init__(self) -> None:
        for key in ("max_bytes", "max_image_pixels"):
            _check_positive(key, getattr(self, key), int)
        for key in ("max_video_seconds", "max_audio_seconds", "fetch_timeout_s"):
            _check_positive(key, getattr(self, key), (int, float))
        if self.video_backend not in VIDEO_BACKENDS:
            raise ValueError(f"media.video_backend={self.video_backend!r}; choose one of {', '.join(VIDEO_BACKENDS)}")
        if self.video_fps is not None:
            _check_positive("video_fps", self.video_fps, (int, float))
        for key in ("video_min_frames", "video_max_frames"):
            if getattr(self, key) is not None:
                _check_positive(key, getattr(self, key), int)
        lo, hi = self.video_min_frames, self.video_max_frames
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"media.video_min_frames={lo} is above media.video_max_frames={hi}")
        for key in ("allow_http", "allow_private_addresses"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"media.{key} must be true or false, got {getattr(self, key)!r}")
        if isinstance(self.max_redirects, bool) or not isinstance(self.max_redirects, int) or self.max_redirects < 0:
            raise ValueError(f"media.max_redirects must be a whole number >= 0, got {self.max_redirects!r}")
        if self.allowed_dirs is not None:
            self.allowed_dirs = _check_dirs(self.allowed_dirs)


def _check_dirs(dirs: object) -> list[str]:
    """``dirs`` as a list of absolute folder names (``pathlib.Path`` entries become strings)."""
    if isinstance(dirs, (str, bytes, os.PathLike)) or not isinstance(dirs, (list, tuple)):
        raise ValueError(f"media.allowed_dirs must be a list of folders, got {dirs!r}")
    out = []
    for entry in dirs:
        name = os.fspath(entry) if isinstance(entry, (str, os.PathLike)) else None
        if not isinstance(name, str) or not os.path.isabs(name) or "\0" in name:
            raise ValueError(f"media.allowed_dirs entries must be absolute folder paths, got {entry!r}")
        out.append(name)
    return out


def _check_positive(key: str, value: object, kind: type | tuple[type, ...]) -> None:
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:  # type: ignore[operator]
        raise ValueError(f"media.{key} must be a positive number, got {value!r}")
