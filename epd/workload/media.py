"""Synthetic media files: deterministic random images, cheap to make even at 4k."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

JPEG_QUALITY = 90
PNG_COMPRESS_LEVEL = 1  # zlib's fastest level: PNG of noisy content is otherwise ~10x slower
GRID_COLUMNS = 16  # colour blocks across the image; rows follow the aspect ratio
NOISE_LEVELS = 64  # grain amplitude, so JPEG sizes are photo-like (~0.35 byte/pixel), not flat


@dataclass(frozen=True)
class ImageSpec:
    """One image to write: its path, size, format, and the seed keys of its content."""

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


def write_image(spec: ImageSpec) -> Path:
    """Write `spec`'s image unless the file exists (its name encodes everything that sets its
    bytes, so an existing file is the same image). Atomic: temp file, then rename."""
    if spec.path.exists():
        return spec.path
    image = synth_image(np.random.default_rng(list(spec.seed_keys)), spec.width, spec.height)
    tmp_path = spec.path.with_name(f".{spec.path.name}.{os.getpid()}.tmp")
    if spec.image_format == "jpeg":
        image.save(tmp_path, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(tmp_path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    os.replace(tmp_path, spec.path)
    return spec.path


def write_images(specs: list[ImageSpec], max_workers: int | None = None) -> None:
    """Write many images in parallel threads (numpy and PIL's encoders release the GIL)."""
    unique = list({spec.path: spec for spec in specs}.values())
    if not unique:
        return
    max_workers = max_workers or min(16, os.cpu_count() or 1, len(unique))
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        list(pool.map(write_image, unique))
