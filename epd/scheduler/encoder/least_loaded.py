"""``least_loaded``: each request goes to the encoder with the least outstanding work, counted in
estimated tokens (not requests): items assigned there and not yet reported finished by it. Ties
(e.g. every encoder idle) rotate, so equal encoders share the work instead of the first taking it all."""

from __future__ import annotations

from epd.scheduler import ENCODER_POLICIES
from epd.scheduler.base import EncoderPolicy, MediaItemInfo


@ENCODER_POLICIES.register("least_loaded")
class LeastLoaded(EncoderPolicy):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._last = -1  # position (in rank order) of the encoder the last tie went to

    def choose(self, items: list[MediaItemInfo]) -> list[int]:
        ranks: list[int] = []
        chosen: int | None = None
        for item in items:
            group = self.candidates(item.modality)
            if chosen is None or chosen not in group:  # the request's first item (of this modality) decides
                chosen = self._least(group)
            ranks.append(chosen)
        return ranks

    def _least(self, group: list[int]) -> int:
        order = list(self.encoders)
        n = len(order)

        def key(rank: int) -> tuple[int, int, int]:
            return (self.load.tokens[rank], self.load.items[rank], (order.index(rank) - self._last - 1) % n)

        rank = min(group, key=key)
        self._last = order.index(rank)
        return rank
