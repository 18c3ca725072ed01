"""Load videos: fetch, probe, decode only the frames a ``FrameSampling`` keeps, with any backend.

``load_video`` returns a ``VideoClip`` whose ``processor_metadata()`` is what transformers' video
processors need with pre-sampled frames (``do_sample_frames=False``): ``total_num_frames`` and
``fps`` of the source and ``frames_indices`` (Qwen2.5-VL derives ``second_per_grid_ts`` from them,
Qwen3-VL its per-frame timestamps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from epd.media.audio import DEFAULT_SAMPLING_RATE, AudioClip, decode_audio
from epd.media.config import MediaConfig
from epd.media.container import probe, require_stream
from epd.media.errors import MediaError, describe, over_limit, short
from epd.media.sampling import FrameSampling
from epd.media.source import fetch_bytes
from epd.media.video_backends import get_backend


@dataclass(frozen=True)
class VideoClip:
    """Frames kept from one video, with what the processor and prompt need to know about them."""

    frames: np.ndarray  # [T, H, W, 3] uint8 RGB
    indices: np.ndarray  # [T] int64, index of each kept frame in the source (presentation order)
    timestamps: np.ndarray  # [T] float64 seconds, indices / fps (as transformers' VideoMetadata)
    fps: float  # average frame rate of the source
    num_source_frames: int
    duration: float  # num_source_frames / fps, seconds
    backend: str  # the decoder that produced the frames

    def processor_metadata(self) -> dict[str, Any]:
        """``video_metadata`` for a transformers video processor called with ``do_sample_frames=False``.

        A fresh dict (and list) on every call: Qwen3-VL's processor extends ``frames_indices`` in place.
        """
        return {
            "total_num_frames": self.num_source_frames,
            "fps": self.fps,
            "duration": self.duration,
            "height": int(self.frames.shape[1]),
            "width": int(self.frames.shape[2]),
            "video_backend": self.backend,
            "frames_indices": self.indices.tolist(),
        }


def load_video(source: str, cfg: MediaConfig | None = None, sampling: FrameSampling | None = None) -> VideoClip:
    """The frames ``sampling`` keeps of the video at ``source`` (None: every frame).

    ``source`` is a path, ``file://``, ``data:`` or ``http(s)://``, read under ``cfg``'s source policy
    (``epd.media.source``); the decoder is ``cfg.video_backend``. ``MediaError`` for an unreadable, truncated or corrupt file, no video
    stream, no frames, or a video over ``cfg.max_video_seconds``.
    """
    cfg = cfg or MediaConfig()
    return decode_video(fetch_bytes(source, cfg=cfg), short(source), cfg, sampling)


def load_video_audio(
    source: str,
    cfg: MediaConfig | None = None,
    sampling: FrameSampling | None = None,
    sampling_rate: int = DEFAULT_SAMPLING_RATE,
) -> tuple[VideoClip, AudioClip]:
    """The video at ``source`` and its audio track (Qwen3-Omni's audio-in-video), fetched once.

    The audio is decoded as by ``load_audio`` and checked against ``cfg.max_audio_seconds``; a
    video without an audio track is a ``MediaError``.
    """
    cfg = cfg or MediaConfig()
    data = fetch_bytes(source, cfg=cfg)
    label = short(source)
    clip = decode_video(data, label, cfg, sampling)
    return clip, decode_audio(data, label, cfg, sampling_rate, what="audio track of video")


def decode_video(data: bytes, label: str, cfg: MediaConfig, sampling: FrameSampling | None = None) -> VideoClip:
    """``load_video`` on bytes already fetched; ``label`` names the item in messages."""
    found = probe(data, label)
    require_stream(found, "video", label)
    limit = cfg.max_video_seconds
    if found.video_seconds is not None and found.video_seconds > limit:
        raise over_limit(f"video {label}", f"{found.video_seconds:.1f} s long", "max_video_seconds", limit)
    backend = get_backend(cfg.video_backend)
    try:
        with backend(data) as reader:
            # fps from the header as PyAV reads it, whatever the backend: torchcodec's differs in the
            # last bit for 30000/1001, and fps feeds the processor's second_per_grid_ts / timestamps
            num_frames, fps = reader.info.num_frames, found.video_fps or reader.info.fps
            if num_frames == 0:
                raise MediaError(f"video {label} has no frames")
            if not fps > 0:
                raise MediaError(f"video {label} has no usable frame rate ({fps})")
            duration = num_frames / fps
            if duration > limit:
                raise over_limit(f"video {label}", f"{duration:.1f} s long", "max_video_seconds", limit)
            indices = sampling.indices(num_frames, fps) if sampling else np.arange(num_frames, dtype=np.int64)
            frames = reader.read(indices)
    except MediaError as exc:
        if label in str(exc):
            raise
        raise MediaError(f"video {label}: {describe(exc)}") from exc
    except Exception as exc:  # any decoder library's failure fails this item, not the process
        if found.video_frames == 0:
            raise MediaError(f"video {label} has no frames") from exc
        raise MediaError(f"cannot decode video {label} with {backend.name}: {describe(exc)}") from exc
    assert frames.shape == (len(indices), *frames.shape[1:3], 3) and frames.dtype == np.uint8, frames.shape
    return VideoClip(
        frames=frames,
        indices=indices,
        timestamps=indices / fps,
        fps=fps,
        num_source_frames=num_frames,
        duration=duration,
        backend=backend.name,
    )
