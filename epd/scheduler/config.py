"""Scheduling policy selection (``conf/scheduler/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_ITEM_TOKENS = {"image": 1024, "video": 4096, "audio": 750}


@dataclass(kw_only=True)
class SchedulerConfig:
    """Policies chosen by name from their registries, and what they estimate work with."""

    encoder_policy: str = "round_robin"
    """Which encoder instance gets each media item (``epd.scheduler.ENCODER_POLICIES``): ``round_robin``,
    ``least_loaded``, ``modality``, ``split``, ``cache_affinity``."""
    within_group: str = "round_robin"
    """``encoder_policy=modality``: the policy that places items inside each modality's encoder group
    (any policy but ``modality``), e.g. ``least_loaded`` or ``split``."""
    item_tokens: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_ITEM_TOKENS))
    """Estimated tokens of an item the frontend cannot size (no metadata, unread header), per modality."""
    pixels_per_token: int = 784
    """Image area one output token covers when the frontend sizes an image itself and the processor
    cannot tell: (patch 14 x spatial merge 2)^2 for Qwen2.5-VL; Qwen3-VL's is 32^2."""
    audio_tokens_per_second: float = 25.0
    """Tokens per second of audio or video-seconds hint (Qwen2-Audio: 25, Qwen3-Omni: 13)."""
    ring_replicas: int = 64
    """``cache_affinity``: virtual points per encoder on the consistent-hash ring (more = more even)."""
    decode_policy: str = "round_robin"
    """With separate prefill and decode instances: which decode instance continues a prefilled request
    (``epd.scheduler.decode.DECODE_POLICIES``): ``round_robin``, ``least_loaded`` (most free KV blocks)."""

    def __post_init__(self) -> None:
        from epd.scheduler import ENCODER_POLICIES

        for key in ("encoder_policy", "within_group"):
            name = getattr(self, key)
            if name not in ENCODER_POLICIES:
                raise ValueError(f"scheduler.{key}={name!r} is unknown; known: {', '.join(sorted(ENCODER_POLICIES))}")
        from epd.scheduler.decode import DECODE_POLICIES

        if self.decode_policy not in DECODE_POLICIES:
            raise ValueError(
                f"scheduler.decode_policy={self.decode_policy!r} is unknown; known: {', '.join(DECODE_POLICIES)}"
            )
        if self.within_group == "modality":
            raise ValueError("scheduler.within_group=modality would nest groups in groups: pick another policy")
        for modality, tokens in self.item_tokens.items():
            if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
                raise ValueError(f"scheduler.item_tokens.{modality}={tokens!r}: set a positive integer")
        if self.pixels_per_token < 1 or self.ring_replicas < 1 or not self.audio_tokens_per_second > 0:
            raise ValueError(
                "scheduler.pixels_per_token, scheduler.ring_replicas and scheduler.audio_tokens_per_second "
                "must be positive"
            )
