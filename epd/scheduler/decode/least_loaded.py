"""``least_loaded``: each prefilled request goes to the decode instance with the most free KV blocks,
counting as taken the blocks of requests already sent there but not yet admitted. Ties rotate, so
equal instances share the work instead of the first taking it all."""

from __future__ import annotations

from epd.scheduler.decode import DECODE_POLICIES
from epd.scheduler.decode.base import DecodePolicy, DecodeRequest


@DECODE_POLICIES.register("least_loaded")
class LeastLoaded(DecodePolicy):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._last = -1  # position of the instance the last tie went to

    def choose(self, req: DecodeRequest) -> int:
        n = len(self.ranks)

        def key(i: int) -> tuple[int, int, int]:
            rank = self.ranks[i]
            return (-self.load.available_blocks(rank), self.load.requests[rank], (i - self._last - 1) % n)

        best = min(range(n), key=key)
        self._last = best
        return self.ranks[best]
