"""random_image workload: `image_count` synthetic images plus ~`input_len` random text tokens.

Images are real encoded files written into `media_dir` and referenced by absolute local path.
By default every image of the run is distinct (so an embedding cache never hits by accident);
`num_distinct_images=N` instead cycles through a pool of N. Content is seeded by
(seed, request, image), so the same seed gives byte-identical files; files already present under
the same name are reused, which makes sweeps over one media directory cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from epd.workload.arrivals import (
    IMAGE_STREAM,
    PROMPT_STREAM,
    assign_arrivals,
    seeded_rng,
)
from epd.workload.base import WorkloadConfig, WorkloadRequest
from epd.workload.media import ImageSpec, write_images
from epd.workload.text import make_prompt

MEASURED, WARMUP, POOL = 0, 1, 2  # seed keys telling the image families apart
FILE_EXTENSIONS = {"jpeg": "jpg", "png": "png"}


def build(cfg: WorkloadConfig, media_dir: Path, tokenizer: Any = None) -> list[WorkloadRequest]:
    """Warmup requests, then `num_requests` measured ones, with Poisson arrivals."""
    requests: list[WorkloadRequest] = []
    specs: list[ImageSpec] = []
    for kind, count in ((WARMUP, cfg.warmup_requests), (MEASURED, cfg.num_requests)):
        for index in range(count):
            images = [_image_spec(cfg, media_dir, kind, index, k) for k in range(cfg.image_count)]
            specs += images
            requests.append(_request(cfg, kind, index, images, tokenizer))
    write_images(specs)
    return assign_arrivals(requests, cfg)


def _request(cfg: WorkloadConfig, kind: int, index: int, images: list[ImageSpec], tokenizer: Any) -> WorkloadRequest:
    rng = seeded_rng(cfg.seed, PROMPT_STREAM, kind, index)
    text = make_prompt(rng, cfg.input_len, tokenizer)
    content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": str(spec.path)}} for spec in images]
    if text:
        content.append({"type": "text", "text": text})
    return WorkloadRequest(
        id=f"warmup-{index}" if kind == WARMUP else f"req-{index}",
        messages=[{"role": "user", "content": content}],
        max_tokens=cfg.output_len,
        temperature=cfg.temperature,
        ignore_eos=cfg.ignore_eos,
        # a per-request sampling seed makes sampled runs repeatable; greedy needs none
        seed=int(rng.integers(2**31)) if cfg.temperature > 0 else None,
        warmup=kind == WARMUP,
    )


def _image_spec(cfg: WorkloadConfig, media_dir: Path, kind: int, index: int, k: int) -> ImageSpec:
    """Which image the k-th item of request `index` is; the file name encodes its content."""
    if kind == MEASURED and cfg.num_distinct_images > 0:
        pool_index = (index * cfg.image_count + k) % cfg.num_distinct_images
        keys, tag = (POOL, pool_index), f"pool{pool_index}"
    else:
        keys, tag = (
            (kind, index, k),
            f"{'warmup' if kind == WARMUP else 'req'}{index}-{k}",
        )
    width, height = cfg.image_size
    name = f"rand-s{cfg.seed}-{tag}-{width}x{height}.{FILE_EXTENSIONS[cfg.image_format]}"
    return ImageSpec(
        path=(media_dir / name).absolute(),
        width=width,
        height=height,
        image_format=cfg.image_format,
        seed_keys=(cfg.seed, IMAGE_STREAM, *keys),
    )
