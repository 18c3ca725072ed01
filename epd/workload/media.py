"""Synthetic media files: deterministic random images, videos and audio clips.

Images are made here (cheap even at 4k); videos (mp4, H.264, optional AAC track) and audio clips
(wav/flac/mp3) come from `epd.media.synth`. Every file is written atomically (temp file, then
rename) and only if missing: its name encodes everything that sets its bytes, so sweeps that share
a media directory reuse files instead of rewriting them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

JPEG_QUALITY = 90
PNG_COMPRESS_LEVEL = 1  # zlib's fastest level: PNG of noisy content is otherwise ~10x slower
GRID_COLUMNS = 16  # colour blocks across the image; rows follow the aspect ratio
NOISE_LEVELS = 64  # grain amplitude, so JPEG sizes are photo-like (~0.35 byte/pixel), not flat

_SIZES_ONLY: ContextVar[bool] = ContextVar("epd_workload_sizes_only", default=False)


@contextmanager
def sizes_only(enabled: bool = True) -> Iterator[None]:
    """Inside the block, synthetic generators write no media and give each part its size hints instead."""
    token = _SIZES_ONLY.set(enabled)
    try:
        yield
    finally:
        _SIZES_ONLY.reset(token)


def size_hints_only() -> bool:
    """Whether the generator runs under `sizes_only()` (no files, size hints)."""
    return _SIZES_ONLY.get()


@dataclass(frozen=True)
class ImageSpec:
    """One image to write: its path, size, format, and the seed keys of its content."""

    part_type: ClassVar[str] = "image_url"
    path: Path
    width: int
    height: int
    image_format: str  # "jpeg" | "png"
    seed_keys: tuple[int, ...]


def synth_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A random RGB image: random colour blocks (a small grid, upscaled) plus fine grain.

    The blocks make every seed look different; the grain gives the entropy of a photo, so
    encoded sizes and decode times are realistic. ~15 ms at 1080p, plus encoding.
    """
    grid_rows = max(2, round(GRID_COLUMNS * height / width))
    grid = rng.integers(0, 256, size=(grid_rows, GRID_COLUMNS, 3), dtype=np.uint8)
    blocks = Image.fromarray(grid).resize((width, height), Image.Resampling.NEAREST)
    # raw random bytes masked to [0, NOISE_LEVELS) are ~4x faster than rng.integers here
    grain = np.frombuffer(rng.bytes(height * width * 3), dtype=np.uint8)
    grain = (grain & (NOISE_LEVELS - 1)).reshape(height, width, 3)
    # blocks // 4 * 3 <= 189 and grain < 64, so the uint8 sum cannot wrap
    pixels = np.asarray(blocks) // 4 * 3 + grain  # [H, W, 3] uint8
    return Image.fromarray(pixels)


@dataclass(frozen=True)
class VideoSpec:
    """One mp4 to write with `epd.media.synth.write_test_video`; `seed` sets its frames and audio."""

    part_type: ClassVar[str] = "video_url"
    path: Path
    seconds: float
    fps: float
    width: int
    height: int
    with_audio: bool
    seed: int


@dataclass(frozen=True)
class AudioSpec:
    """One audio clip to write with `epd.media.synth.write_test_audio`; `seed` sets its signal."""

    part_type: ClassVar[str] = "audio_url"
    path: Path
    seconds: float
    sampling_rate: int
    audio_format: str  # "wav" | "flac" | "mp3"
    seed: int


MediaSpec = ImageSpec | VideoSpec | AudioSpec


def synth_seed(*keys: int) -> int:
    """The integer content seed that `epd.media.synth` takes, drawn from the seed keys `keys`."""
    return int(np.random.default_rng(list(keys)).integers(2**31))


def media_part(spec: MediaSpec, size_hints: bool = False) -> dict[str, Any]:
    """The OpenAI content part that references `spec`'s file, e.g. {"type": "video_url", ...};
    with `size_hints` its size rides beside the url (`epd.frontend.chat.HINT_KEYS`: width, height,
    seconds), for consumers that never open the file (the simulator)."""
    ref: dict[str, Any] = {"url": str(spec.path)}
    if size_hints:
        ref |= size_of(spec)
    return {"type": spec.part_type, spec.part_type: ref}


def size_of(spec: MediaSpec) -> dict[str, float]:
    """The size hints of `spec`: width and height of images and videos, seconds of videos and audio."""
    if isinstance(spec, ImageSpec):
        return {"width": spec.width, "height": spec.height}
    if isinstance(spec, VideoSpec):
        return {"width": spec.width, "height": spec.height, "seconds": spec.seconds}
    return {"seconds": spec.seconds}


def write_image(spec: ImageSpec) -> Path:
    """Write `spec`'s image unless the file exists (same name, same image)."""
    if spec.path.exists():
        return spec.path
    image = synth_image(np.random.default_rng(list(spec.seed_keys)), spec.width, spec.height)
    if spec.image_format == "jpeg":
        options: dict[str, Any] = {"format": "JPEG", "quality": JPEG_QUALITY}
    else:
        options = {"format": "PNG", "compress_level": PNG_COMPRESS_LEVEL}
    return _write_once(spec.path, lambda tmp: image.save(tmp, **options))


def write_media(specs: Iterable[MediaSpec], max_workers: int | None = None) -> None:
    """Write every missing file of `specs` in parallel threads (numpy, PIL and the codecs release
    the GIL); a spec listed twice is written once."""
    unique = list({spec.path: spec for spec in specs}.values())
    if not unique:
        return
    max_workers = max_workers or min(16, os.cpu_count() or 1, len(unique))
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        list(pool.map(_write_spec, unique))


def _write_spec(spec: MediaSpec) -> Path:
    if isinstance(spec, ImageSpec):
        return write_image(spec)
    from epd.media import synth  # imports PyAV; image-only workloads never need it

    if isinstance(spec, VideoSpec):
        size = (spec.width, spec.height)
        return _write_once(
            spec.path,
            lambda tmp: synth.write_test_video(tmp, spec.seconds, spec.fps, size, spec.with_audio, spec.seed),
        )
    return _write_once(
        spec.path,
        lambda tmp: synth.write_test_audio(tmp, spec.seconds, spec.sampling_rate, spec.audio_format, spec.seed),
    )


def _write_once(path: Path, write: Callable[[Path], object]) -> Path:
    """Run `write(tmp_path)` and rename the result to `path`, unless `path` already exists; a
    failed or interrupted write leaves no partial file under the final name."""
    if path.exists():
        return path
    # the temp name keeps the extension, for writers that pick the container from it
    tmp_path = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)
    return path
