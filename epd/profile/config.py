"""What ``python -m epd.profile`` measures (``profile.*``), beside the run's own config tree."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from epd.config import RunConfig, build_run_config, from_dict

CPU_DEFAULTS: dict[str, Any] = {
    "image_sizes": ["360p", "720p", "1080p"],
    "batch_items": [1, 2, 4],
    "video_seconds": [2.0],
    "audio_seconds": [2.0, 10.0],
    "prefill_tokens": [16, 64, 256, 1024, 2048],
    "prefill_context": 2048,
    "decode_batches": [1, 4, 16, 64],
    "decode_context": [64, 1024],
    "transfer_sizes": ["64K", "1M", "16M"],
}
GPU_DEFAULTS: dict[str, Any] = {
    "image_sizes": ["360p", "720p", "1080p", "1440p", "4k"],
    "batch_items": [1, 2, 4, 8],
    "video_seconds": [4.0, 16.0],
    "audio_seconds": [5.0, 30.0],
    "prefill_tokens": [64, 256, 1024, 4096, 8192, 16384],
    "prefill_context": 8192,
    "decode_batches": [1, 8, 32, 64, 128, 256],
    "decode_context": [256, 4096],
    "transfer_sizes": ["64K", "1M", "16M", "154M", "1G"],
}
QUICK: dict[str, Any] = {
    "image_sizes": ["360p", "720p"],
    "batch_items": [1, 2],
    "video_seconds": [1.0],
    "audio_seconds": [1.0, 3.0],
    "prefill_tokens": [16, 64, 256],
    "prefill_context": 256,
    "decode_batches": [1, 4, 8],
    "decode_context": [32, 256],
    "transfer_sizes": ["64K", "1M"],
}


@dataclass(kw_only=True)
class ProfileOptions:
    """Which points ``epd.profile`` measures; an empty list takes the device's default (``CPU_DEFAULTS``,
    ``GPU_DEFAULTS``; ``quick`` takes ``QUICK``)."""

    quick: bool = False
    """A handful of small points (tests, smoke runs): well under a minute on CPU for a tiny model."""
    repeats: int = 5
    """Timed runs per point; one untimed run comes first."""
    statistic: str = "auto"
    """What is kept of a point's runs: ``median``, ``mean``, or ``auto`` = the median on a GPU, the mean on
    a CPU host (whose other tenants slow some runs; a real job meets those slowdowns in proportion)."""
    threads: int | None = None
    """CPU: torch threads while measuring (None: cores / 2, what each rank of a 2-rank CPU run gets)."""
    image_sizes: list[str] = field(default_factory=list)
    """Image resolutions (presets or WxH) whose fetch, processor and tower are timed."""
    batch_items: list[int] = field(default_factory=list)
    """Items per tower call, at the middle image size."""
    video_seconds: list[float] = field(default_factory=list)
    """Video lengths (360p, 30 fps) timed when the model takes video."""
    audio_seconds: list[float] = field(default_factory=list)
    """Audio clip lengths timed when the model takes audio."""
    prefill_tokens: list[int] = field(default_factory=list)
    """Prefill chunk sizes timed from an empty context."""
    prefill_context: int = 0
    """Context (cached tokens) before the attention-cost prefill points (0: the device default)."""
    decode_batches: list[int] = field(default_factory=list)
    """Decode batch sizes timed at the first ``decode_context``."""
    decode_context: list[int] = field(default_factory=list)
    """Tokens per sequence during the decode points: the first for every batch, the others for the slope."""
    transfer_backends: list[str] = field(default_factory=lambda: ["nccl", "shm", "zmq"])
    """Transfer backends timed between two processes (nccl needs two GPUs on a GPU host: skipped on one)."""
    transfer_sizes: list[str] = field(default_factory=list)
    """Payload sizes of the transfer points (binary units: 64K, 1M, 16M, ...)."""
    allreduce_gbps: float | None = None
    """Tensor-parallel all-reduce bandwidth to record when it cannot be measured (one GPU); None: measured
    with two ranks where possible, else the assumed NVLink figure (``epd.profile.transfer``)."""
    allreduce_latency_us: float | None = None
    """Fixed cost of one all-reduce to record, µs (same rule)."""

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise ValueError(f"profile.repeats={self.repeats}: set 1 or more")
        if self.statistic not in ("auto", "median", "mean"):
            raise ValueError(f"profile.statistic={self.statistic!r}: choose auto, median or mean")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"profile.threads={self.threads}: set 1 or more (or null)")

    def resolved(self, device: str) -> ProfileOptions:
        """These options with every empty list filled from the device's (or quick) defaults."""
        defaults = QUICK if self.quick else (CPU_DEFAULTS if device == "cpu" else GPU_DEFAULTS)
        values = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for key, default in defaults.items():
            if not values[key]:
                values[key] = default
        return ProfileOptions(**values)


@dataclass(kw_only=True)
class ProfileRunConfig:
    run: RunConfig
    profile: ProfileOptions


def build_profile_config(raw: dict[str, Any]) -> ProfileRunConfig:
    data = {k: v for k, v in raw.items() if k != "hydra"}
    options = from_dict(ProfileOptions, data.pop("profile", None) or {}, "profile")
    return ProfileRunConfig(run=build_run_config(data), profile=options)
