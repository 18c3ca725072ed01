"""random_image workload: `image_count` synthetic images plus ~`input_len` random text tokens.

Images are real encoded files written into `media_dir` and referenced by absolute local path.
By default every image of the run is distinct (so an embedding cache never hits by accident);
`num_distinct_images=N` instead cycles through a pool of N. Content is seeded by
(seed, request, image), so the same seed gives byte-identical files; files already present under
the same name are reused, which makes sweeps over one media directory cheap.

Each request is one user message: `[{"type": "image_url", "image_url": {"url": <abs path>}} x
image_count, {"type": "text", "text": ...}]` (the text part is left out when input_len=0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from epd.workload.arrivals import IMAGE_STREAM
from epd.workload.base import WorkloadConfig, WorkloadRequest
from epd.workload.media import ImageSpec
from epd.workload.synthetic import MEASURED, POOL, build_synthetic, item_count, item_tag, media_path

FILE_EXTENSIONS = {"jpeg": "jpg", "png": "png"}


def build(cfg: WorkloadConfig, media_dir: Path, tokenizer: Any = None) -> list[WorkloadRequest]:
    """Warmup requests, then `num_requests` measured ones, with Poisson arrivals."""
    return build_synthetic(
        cfg,
        tokenizer,
        lambda kind, index: [
            image_spec(cfg, media_dir, kind, index, k) for k in range(item_count(cfg, cfg.image_count, kind, index))
        ],
    )


def image_spec(cfg: WorkloadConfig, media_dir: Path, kind: int, index: int, k: int) -> ImageSpec:
    """Which image the k-th item of request `index` is; the file name encodes its content."""
    if kind == MEASURED and cfg.num_distinct_images > 0:
        pool_index = (index * cfg.image_count + k) % cfg.num_distinct_images
        keys, tag = (POOL, pool_index), f"pool{pool_index}"
    else:
        keys, tag = (kind, index, k), item_tag(kind, index, k)
    width, height = cfg.image_size
    return ImageSpec(
        path=media_path(media_dir, f"rand-s{cfg.seed}-{tag}-{width}x{height}.{FILE_EXTENSIONS[cfg.image_format]}"),
        width=width,
        height=height,
        image_format=cfg.image_format,
        seed_keys=(cfg.seed, IMAGE_STREAM, *keys),
    )
