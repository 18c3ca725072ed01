"""Open encoded media with PyAV (always installed) and read what the container header says.

Every decoder path probes first, so a file that is not media, or lacks the stream asked for, or
says in its header that it is over a limit, fails with the same clear message whatever video
backend decodes it afterwards.

Only the demuxers in ``CONTAINER_FORMATS`` may open untrusted bytes (FFmpeg's
``format_whitelist``): playlist and concatenation formats (hls, dash, concat, image2 sequences)
name other files or URLs that FFmpeg would open itself, outside epd's source policy.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import av

from epd.media.errors import MediaError, describe

CONTAINER_FORMATS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpegts,mpeg,flv,asf,ogg,wav,w64,flac,mp3,aac,aiff,caf"
"""FFmpeg demuxers that may read media bytes (``format_whitelist``): a demuxer passes if one of its names is here."""
AV_OPTIONS = {"format_whitelist": CONTAINER_FORMATS}


def av_open(data: bytes) -> av.container.InputContainer:
    """``av.open`` on in-memory ``data`` with the demuxers limited to ``CONTAINER_FORMATS``."""
    try:
        return av.open(io.BytesIO(data), mode="r", metadata_errors="ignore", options=dict(AV_OPTIONS))
    except TypeError:  # PyAV 19 dropped metadata_errors (metadata is then decoded strictly)
        return av.open(io.BytesIO(data), mode="r", options=dict(AV_OPTIONS))


@dataclass(frozen=True)
class Probe:
    """What the container header says; durations are None where the header does not say."""

    streams: tuple[str, ...]  # stream types in file order: "video", "audio", "subtitle", "data"
    video_frames: int | None  # frame count of the first video stream per the header (0: empty or unknown)
    video_fps: float | None  # its average frame rate per the header
    video_seconds: float | None
    audio_seconds: float | None

    @property
    def has_video(self) -> bool:
        return "video" in self.streams

    @property
    def has_audio(self) -> bool:
        return "audio" in self.streams


@contextmanager
def open_container(data: bytes, label: str) -> Iterator[av.container.InputContainer]:
    """``av.open`` on ``data``; a file FFmpeg cannot parse is a ``MediaError`` naming ``label``."""
    try:
        container = av_open(data)
    except Exception as exc:  # FFmpegError, or whatever else PyAV raises on bad bytes
        raise MediaError(
            f"cannot open {label}: not a media file FFmpeg can read, or truncated ({describe(exc)})"
        ) from exc
    try:
        yield container
    finally:
        container.close()


def probe(data: bytes, label: str) -> Probe:
    """Read the header of ``data`` (no packets are read)."""
    with open_container(data, label) as container:
        try:
            return _probe(container)
        except Exception as exc:  # a header PyAV reads but cannot make sense of
            raise MediaError(f"cannot open {label}: unusable container header ({describe(exc)})") from exc


def _probe(container: av.container.InputContainer) -> Probe:
    video = container.streams.video[0] if container.streams.video else None
    audio = container.streams.audio[0] if container.streams.audio else None
    whole = container.duration / av.time_base if container.duration else None
    return Probe(
        streams=tuple(s.type for s in container.streams),
        video_frames=video.frames if video is not None else None,
        video_fps=float(video.average_rate) if video is not None and video.average_rate else None,
        video_seconds=_seconds(video, whole),
        audio_seconds=_seconds(audio, whole),
    )


def require_stream(found: Probe, kind: str, label: str) -> None:
    """``MediaError`` unless ``found`` has a ``kind`` ("video" / "audio") stream."""
    if kind not in found.streams:
        have = ", ".join(found.streams) or "none"
        raise MediaError(f"{label} has no {kind} stream (streams found: {have})")


def _seconds(stream: av.stream.Stream | None, whole: float | None) -> float | None:
    if stream is None:
        return None
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return whole
