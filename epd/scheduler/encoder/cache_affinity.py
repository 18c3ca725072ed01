"""``cache_affinity``: the same content always goes to the same encoder, by consistent hashing of
the item's content hash, so repeated media hit that encoder's embedding cache.

Each encoder owns ``scheduler.ring_replicas`` points on a 64-bit ring; an item goes to the owner of
the first point at or after its hash. Removing an encoder from a group moves only its own share.
"""

from __future__ import annotations

import bisect
import hashlib

from epd.scheduler import ENCODER_POLICIES
from epd.scheduler.base import EncoderPolicy, MediaItemInfo


def ring_point(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Consistent-hash ring over ``ranks`` with ``replicas`` virtual points each."""

    def __init__(self, ranks: list[int], replicas: int) -> None:
        points = sorted((ring_point(f"encoder-{rank}-{v}"), rank) for rank in ranks for v in range(replicas))
        self._keys = [p for p, _ in points]
        self._ranks = [r for _, r in points]

    def owner(self, key: str) -> int:
        at = bisect.bisect_left(self._keys, ring_point(key)) % len(self._keys)
        return self._ranks[at]


@ENCODER_POLICIES.register("cache_affinity")
class CacheAffinity(EncoderPolicy):
    needs_content_hash = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._rings: dict[tuple[int, ...], HashRing] = {}

    def choose(self, items: list[MediaItemInfo]) -> list[int]:
        return [self._ring(tuple(self.candidates(it.modality))).owner(it.content_hash or it.source) for it in items]

    def _ring(self, group: tuple[int, ...]) -> HashRing:
        if group not in self._rings:
            self._rings[group] = HashRing(list(group), self.cfg.ring_replicas)
        return self._rings[group]
