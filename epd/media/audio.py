"""Decode audio (wav, flac, mp3, ogg, aac/m4a, or the audio track of a video) with PyAV.

Resampling, stated because exact equality with a reference holds only when both sides are fed the
same samples: PyAV decodes the first audio stream, ``av.AudioResampler(format="fltp",
rate=sampling_rate)`` (FFmpeg's libswresample with its defaults: band-limited sinc interpolation,
filter_size 32, phase_shift 10, cutoff 0.97) converts every channel to float32 at the target rate,
and the mono signal is the arithmetic mean of the channels (as librosa's ``to_mono``). A stream
already at the target rate passes through unresampled. Samples are concatenated in decode order
from the first decoded sample; any start offset of the stream is not applied.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import av
import numpy as np

from epd.media.config import MediaConfig
from epd.media.container import open_container, probe, require_stream
from epd.media.errors import MediaError, describe, over_limit, short
from epd.media.source import fetch_bytes

DEFAULT_SAMPLING_RATE = 16000  # Whisper-style feature extractors (Qwen2-Audio, Qwen3-Omni)


@dataclass(frozen=True)
class AudioClip:
    """Mono float32 samples at ``sampling_rate``; ``duration`` in seconds (``len(samples) / sampling_rate``)."""

    samples: np.ndarray  # [N] float32, nominally in [-1, 1]
    sampling_rate: int
    duration: float


def load_audio(source: str, cfg: MediaConfig | None = None, sampling_rate: int = DEFAULT_SAMPLING_RATE) -> AudioClip:
    """The audio at ``source`` (path, ``file://``, ``data:``, ``http(s)://``) as mono ``sampling_rate`` samples.

    ``cfg`` (default ``MediaConfig()``) sets the limits and the source policy (``epd.media.source``).

    Raises ``MediaError`` for an unreadable or corrupt file, no audio stream, no samples, or a clip
    over ``cfg.max_audio_seconds`` (checked from the header first, then while decoding).
    """
    cfg = cfg or MediaConfig()
    return decode_audio(fetch_bytes(source, cfg=cfg), short(source), cfg, sampling_rate)


def decode_audio(
    data: bytes, label: str, cfg: MediaConfig, sampling_rate: int = DEFAULT_SAMPLING_RATE, what: str = "audio"
) -> AudioClip:
    """``load_audio`` on bytes already fetched; ``label`` and ``what`` name the item in messages."""
    if sampling_rate <= 0:
        raise ValueError(f"sampling_rate must be positive, got {sampling_rate}")
    found = probe(data, label)
    require_stream(found, "audio", label)
    limit = cfg.max_audio_seconds
    if found.audio_seconds is not None and found.audio_seconds > limit:
        raise over_limit(f"{what} {label}", f"{found.audio_seconds:.1f} s long", "max_audio_seconds", limit)
    max_samples = int(limit * sampling_rate)
    chunks: list[np.ndarray] = []
    num_samples = 0
    try:
        with open_container(data, label) as container:
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp", rate=sampling_rate)
            for frame in _frames_then_flush(container.decode(stream)):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().mean(axis=0, dtype=np.float32)  # [C, n] -> [n]
                    chunks.append(chunk)
                    num_samples += chunk.shape[0]
                if num_samples > max_samples:
                    actual = f"more than {num_samples / sampling_rate:.1f} s long"
                    raise over_limit(f"{what} {label}", actual, "max_audio_seconds", limit)
    except MediaError:
        raise
    except Exception as exc:  # FFmpegError, or anything else PyAV raises on bad bytes: fail this item only
        raise MediaError(f"cannot decode {what} {label}: corrupt or truncated ({describe(exc)})") from exc
    if num_samples == 0:
        raise MediaError(f"{what} {label} has no audio samples (zero length)")
    samples = np.concatenate(chunks)  # [N]
    return AudioClip(samples=samples, sampling_rate=sampling_rate, duration=num_samples / sampling_rate)


def _frames_then_flush(frames: Iterable[av.AudioFrame]) -> Iterator[av.AudioFrame | None]:
    yield from frames
    yield None  # flushes the resampler
    yield None
