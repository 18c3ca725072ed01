"""``round_robin``: items go to the encoders in turn, across requests (skipping encoders that do
not take an item's modality)."""

from __future__ import annotations

from epd.scheduler import ENCODER_POLICIES
from epd.scheduler.base import EncoderPolicy, MediaItemInfo


@ENCODER_POLICIES.register("round_robin")
class RoundRobin(EncoderPolicy):
    def __init__(self, encoders: dict[int, tuple[str, ...]]) -> None:
        super().__init__(encoders)
        self._turn = 0

    def assign(self, items: list[MediaItemInfo]) -> list[int]:
        ranks = []
        order = list(self.encoders)
        for item in items:
            for _ in range(len(order)):
                rank = order[self._turn % len(order)]
                self._turn += 1
                if item.modality in self.encoders[rank]:
                    ranks.append(rank)
                    break
            else:
                raise ValueError(f"no encoder takes {item.modality}")
        return ranks
