"""``round_robin``: prefilled requests go to the decode instances in turn."""

from __future__ import annotations

from epd.scheduler.decode import DECODE_POLICIES
from epd.scheduler.decode.base import DecodePolicy, DecodeRequest


@DECODE_POLICIES.register("round_robin")
class RoundRobin(DecodePolicy):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._turn = 0

    def choose(self, req: DecodeRequest) -> int:
        rank = self.ranks[self._turn % len(self.ranks)]
        self._turn += 1
        return rank
