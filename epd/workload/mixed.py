"""mixed workload: each request carries a seeded draw of modalities (image, video, audio) + text.

`mix` weighs the modalities (normalized; by default all equal). Each request draws `mix_per_request`
distinct modalities by weight, without replacement, from its own seeded stream (seed, request),
so its draw never depends on `num_requests`. With `mix_per_request=1` (the default) requests are
single-modality and the share of each modality follows `mix`; with 2 a request carries two
different modalities (the second drawn from the weights of those left), and with as many as have
a weight, every request carries all of them. A drawn modality brings `image_count` images,
`video_count` videos or `audio_count` clips, made exactly as random_image, random_video and
random_audio make them (same names, so the three workloads share files in one media directory).

Each request is one user message: its image_url parts, then video_url parts, then audio_url
parts (as the single-modality workloads write them), then a text part of ~`input_len` tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from epd.workload.arrivals import MIX_STREAM, seeded_rng
from epd.workload.base import MODALITIES, WorkloadConfig, WorkloadRequest
from epd.workload.media import MediaSpec
from epd.workload.random_audio import audio_spec
from epd.workload.random_image import image_spec
from epd.workload.random_video import video_spec
from epd.workload.synthetic import build_synthetic, item_count

ItemSpec = Callable[[WorkloadConfig, Path, int, int, int], MediaSpec]
ITEM_SPECS: dict[str, tuple[str, ItemSpec]] = {  # modality -> (count key, spec of its k-th item)
    "image": ("image_count", image_spec),
    "video": ("video_count", video_spec),
    "audio": ("audio_count", audio_spec),
}


def build(cfg: WorkloadConfig, media_dir: Path, tokenizer: Any = None) -> list[WorkloadRequest]:
    """Warmup requests, then `num_requests` measured ones, with Poisson arrivals."""
    return build_synthetic(cfg, tokenizer, lambda kind, index: _request_media(cfg, media_dir, kind, index))


def draw_modalities(cfg: WorkloadConfig, kind: int, index: int) -> list[str]:
    """The modalities request `index` of `kind` carries, in `MODALITIES` order."""
    rng = seeded_rng(cfg.seed, MIX_STREAM, kind, index)
    probabilities = list(cfg.mix_probabilities.values())  # in MODALITIES order
    drawn = set(rng.choice(len(MODALITIES), size=cfg.mix_per_request, replace=False, p=probabilities).tolist())
    return [modality for i, modality in enumerate(MODALITIES) if i in drawn]


def _request_media(cfg: WorkloadConfig, media_dir: Path, kind: int, index: int) -> list[MediaSpec]:
    specs: list[MediaSpec] = []
    for modality in draw_modalities(cfg, kind, index):
        count_key, item_spec = ITEM_SPECS[modality]
        count = item_count(cfg, getattr(cfg, count_key), kind, index, MODALITIES.index(modality))
        specs += [item_spec(cfg, media_dir, kind, index, k) for k in range(count)]
    return specs
