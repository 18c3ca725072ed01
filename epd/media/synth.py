"""Deterministic test media that tests and workload generators write on the fly (PyAV encoders).

Every video frame is a 4x4 grid of solid tiles whose colours come from ``(seed, frame index)``, so
neighbouring frames differ everywhere and a wrong frame index is obvious even after lossy coding
(:func:`video_frame` gives the frame as written). Audio is a chirp from 200 Hz to 2 kHz plus a
tone set by ``seed``, so a shifted or stretched decode is obvious too (:func:`audio_samples`).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

AUDIO_FORMATS = {  # fmt -> (container, encoder, sample rate the encoder runs at; None = as given)
    "wav": ("wav", "pcm_s16le", None),
    "flac": ("flac", "flac", None),
    "mp3": ("mp3", "libmp3lame", None),
    "ogg": ("ogg", "libopus", 48000),  # opus only runs at 8/12/16/24/48 kHz
    "m4a": ("ipod", "aac", None),
}
VIDEO_AUDIO_RATE = 44100
GRID = 4


def video_frame(index: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Frame ``index`` as written by :func:`write_test_video`: ``[H, W, 3]`` uint8 RGB, ``size=(W, H)``."""
    width, height = size
    tiles = np.random.default_rng([seed, index]).integers(16, 240, size=(GRID, GRID, 3), dtype=np.uint8)
    row_counts = np.bincount(np.arange(height) * GRID // height, minlength=GRID)  # pixel rows per tile row
    col_counts = np.bincount(np.arange(width) * GRID // width, minlength=GRID)
    return tiles.repeat(row_counts, axis=0).repeat(col_counts, axis=1)  # [H, W, 3]


def audio_samples(seconds: float, sampling_rate: int, seed: int = 0, channels: int = 1) -> np.ndarray:
    """The float32 signal :func:`write_test_audio` encodes: ``[channels, N]`` in [-0.6, 0.6]."""
    t = np.arange(round(seconds * sampling_rate)) / sampling_rate
    span = max(seconds, 1e-6)
    chirp = np.sin(2 * np.pi * (200 * t + (2000 - 200) * t**2 / (2 * span)))  # 200 Hz -> 2 kHz
    freq = 300 + 1200 * np.random.default_rng([seed, 7]).random()  # a distinct tone per seed, 300-1500 Hz
    tone = np.sin(2 * np.pi * freq * t)
    out = [0.4 * chirp + 0.2 * tone * (1 - 0.5 * c) for c in range(channels)]  # channels differ
    return np.stack(out).astype(np.float32)


def write_test_video(
    path: str | Path,
    seconds: float,
    fps: float,
    size: tuple[int, int] = (320, 240),
    with_audio: bool = False,
    seed: int = 0,
    codec: str = "libx264",
    gop: int | None = None,
) -> Path:
    """Write an mp4 of ``round(seconds * fps)`` frames of :func:`video_frame` (yuv420p, even ``size=(W, H)``).

    ``codec`` is ``libx264`` (with B-frames, so decode order differs from display order) or
    ``mpeg4``; ``gop`` is the keyframe interval (default: one per second), so seeking is
    exercised. ``with_audio`` adds an AAC track of :func:`audio_samples` at 44.1 kHz.
    """
    path = Path(path)
    width, height = size
    if width % 2 or height % 2:
        raise ValueError(f"size={size}: yuv420p needs an even width and height")
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream(codec, rate=rate)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.gop_size = gop or max(1, round(fps))
        if codec == "libx264":
            video.codec_context.options = {"preset": "ultrafast", "crf": "18", "x264-params": "bframes=2:b-adapt=0"}
        audio = out.add_stream("aac", rate=VIDEO_AUDIO_RATE, layout="mono") if with_audio else None
        out.start_encoding()
        for i in range(round(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(video_frame(i, size, seed), format="rgb24")
            frame.pts = i
            frame.time_base = 1 / rate
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if audio is not None:
            _encode_audio(out, audio, audio_samples(seconds, VIDEO_AUDIO_RATE, seed), VIDEO_AUDIO_RATE)
    return path


def write_test_audio(
    path: str | Path, seconds: float, sampling_rate: int, fmt: str = "wav", seed: int = 0, channels: int = 1
) -> Path:
    """Write :func:`audio_samples` as ``fmt`` (wav, flac, mp3, ogg (opus, 48 kHz), m4a (aac))."""
    if fmt not in AUDIO_FORMATS:
        raise ValueError(f"unknown audio fmt {fmt!r}; known: {', '.join(AUDIO_FORMATS)}")
    container, encoder, codec_rate = AUDIO_FORMATS[fmt]
    layout = "mono" if channels == 1 else "stereo"
    path = Path(path)
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(encoder, rate=codec_rate or sampling_rate, layout=layout)
        out.start_encoding()  # writes the header even for a clip of zero samples
        _encode_audio(out, stream, audio_samples(seconds, sampling_rate, seed, channels), sampling_rate)
    return path


def _encode_audio(out: av.container.OutputContainer, stream: av.AudioStream, samples: np.ndarray, rate: int) -> None:
    # samples: [C, N] float32; PyAV's encoder converts format/rate and re-chunks to the codec's frame size
    layout = "mono" if samples.shape[0] == 1 else "stereo"
    chunk = 4096
    for start in range(0, samples.shape[1], chunk):
        piece = np.ascontiguousarray(samples[:, start : start + chunk])
        frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout=layout)
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))
