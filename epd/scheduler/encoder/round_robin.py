"""``round_robin``: requests go to the encoders in turn; all items of a request stay together
(an item whose modality that encoder does not take goes to the next one in turn that does)."""

from __future__ import annotations

from epd.scheduler import ENCODER_POLICIES
from epd.scheduler.base import EncoderPolicy, MediaItemInfo


@ENCODER_POLICIES.register("round_robin")
class RoundRobin(EncoderPolicy):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._turn = 0

    def choose(self, items: list[MediaItemInfo]) -> list[int]:
        order = list(self.encoders)
        start = self._turn
        self._turn += 1
        ranks = []
        for item in items:
            self.candidates(item.modality)  # raises when no encoder takes it
            turn = start
            while item.modality not in self.encoders[order[turn % len(order)]]:
                turn += 1
            ranks.append(order[turn % len(order)])
        return ranks
