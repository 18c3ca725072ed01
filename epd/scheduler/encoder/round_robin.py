"""``round_robin``: items go to the encoders in turn, across requests."""

from __future__ import annotations

from epd.scheduler import ENCODER_POLICIES
from epd.scheduler.base import EncoderPolicy, MediaItemInfo


@ENCODER_POLICIES.register("round_robin")
class RoundRobin(EncoderPolicy):
    def __init__(self, encoder_ranks: list[int]) -> None:
        super().__init__(encoder_ranks)
        self._next = 0

    def assign(self, items: list[MediaItemInfo]) -> list[int]:
        ranks = []
        for _ in items:
            ranks.append(self.encoder_ranks[self._next % len(self.encoder_ranks)])
            self._next += 1
        return ranks
