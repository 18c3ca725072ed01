"""Scheduling policies behind registries: encoder assignment (``scheduler.encoder_policy``)."""

from epd.registry import Registry
from epd.scheduler.base import EncoderLoad, EncoderPolicy, MediaItemInfo
from epd.scheduler.config import SchedulerConfig

ENCODER_POLICIES: Registry[EncoderPolicy] = Registry("encoder policy", "epd.scheduler.encoder")


def build_encoder_policy(
    cfg: SchedulerConfig, encoders: dict[int, tuple[str, ...]], load: EncoderLoad | None = None
) -> EncoderPolicy:
    """The configured encoder-assignment policy over ``encoders`` (rank → modalities it takes)."""
    return ENCODER_POLICIES.get(cfg.encoder_policy)(encoders, cfg, load)


__all__ = [
    "ENCODER_POLICIES",
    "EncoderLoad",
    "EncoderPolicy",
    "MediaItemInfo",
    "SchedulerConfig",
    "build_encoder_policy",
]
