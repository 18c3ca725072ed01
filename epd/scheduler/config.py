"""Scheduling policy selection (``conf/scheduler/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(kw_only=True)
class SchedulerConfig:
    """Policies chosen by name from their registries."""

    encoder_policy: str = "round_robin"
    """Which encoder instance gets each media item (``epd.scheduler.ENCODER_POLICIES``)."""

    def __post_init__(self) -> None:
        from epd.scheduler import ENCODER_POLICIES

        if self.encoder_policy not in ENCODER_POLICIES:
            raise ValueError(
                f"scheduler.encoder_policy={self.encoder_policy!r} is unknown; "
                f"known: {', '.join(sorted(ENCODER_POLICIES))}"
            )
