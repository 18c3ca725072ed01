"""``modality``: each modality has its own encoder group (``modalities`` of the topology's
instances) and items rotate within their group, so e.g. audio never queues behind video."""

from __future__ import annotations

from collections import defaultdict

from epd.scheduler import ENCODER_POLICIES
from epd.scheduler.base import EncoderPolicy, MediaItemInfo


@ENCODER_POLICIES.register("modality")
class ByModality(EncoderPolicy):
    def __init__(self, encoders: dict[int, tuple[str, ...]]) -> None:
        super().__init__(encoders)
        self._turn: dict[str, int] = defaultdict(int)

    def assign(self, items: list[MediaItemInfo]) -> list[int]:
        ranks = []
        for item in items:
            group = self.candidates(item.modality)
            if not group:
                raise ValueError(f"no encoder takes {item.modality}")
            ranks.append(group[self._turn[item.modality] % len(group)])
            self._turn[item.modality] += 1
        return ranks
