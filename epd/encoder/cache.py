"""Per-item embedding cache: content hash + processing parameters → the item's encoded output.

Two LRU tiers with byte budgets: the *device* tier keeps tensors where the tower produced them;
an entry pushed out of it moves to the *host* tier (copied to CPU memory) and is dropped when the
host tier overflows. A host hit moves the entry back to the device tier. An entry bigger than a
tier's whole budget skips that tier. On a CPU-only run both tiers are host memory with two budgets.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import torch

from epd.models import EncodedItem


def item_bytes(item: EncodedItem) -> int:
    return sum(t.numel() * t.element_size() for t in item.tensors.values())


class _Tier:
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self.entries: OrderedDict[str, EncodedItem] = OrderedDict()

    def pop(self, key: str) -> EncodedItem | None:
        item = self.entries.pop(key, None)
        if item is not None:
            self.used -= item_bytes(item)
        return item

    def put(self, key: str, item: EncodedItem) -> list[tuple[str, EncodedItem]]:
        """Insert as most recent; returns what had to leave (least recent first)."""
        size = item_bytes(item)
        if size > self.budget:
            return [(key, item)]
        self.pop(key)
        self.entries[key] = item
        self.used += size
        evicted = []
        while self.used > self.budget:
            old_key, old = self.entries.popitem(last=False)
            self.used -= item_bytes(old)
            evicted.append((old_key, old))
        return evicted


class EmbeddingCache:
    """LRU embedding cache over a device tier and a host tier (budgets in bytes, 0 = tier off)."""

    def __init__(self, device_bytes: int, host_bytes: int, device: torch.device) -> None:
        self.device = device
        self.device_tier = _Tier(device_bytes)
        self.host_tier = _Tier(host_bytes)
        self.hits = {"device": 0, "host": 0}
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.device_tier.budget > 0 or self.host_tier.budget > 0

    def get(self, key: str) -> tuple[EncodedItem, str] | None:
        """(item, tier it was found in) or None; a hit is most recent afterwards."""
        item = self.device_tier.pop(key)
        if item is not None:
            self.device_tier.put(key, item)
            self.hits["device"] += 1
            return shared_copy(item), "device"
        item = self.host_tier.pop(key)
        if item is not None:
            self.hits["host"] += 1
            item = _moved(item, self.device)
            self.put(key, item)
            return shared_copy(item), "host"
        self.misses += 1
        return None

    def put(self, key: str, item: EncodedItem) -> None:
        for old_key, old in self.device_tier.put(key, item):
            for _ in self.host_tier.put(old_key, _moved(old, torch.device("cpu"))):
                pass  # out of both tiers: dropped

    def __contains__(self, key: str) -> bool:
        return key in self.device_tier.entries or key in self.host_tier.entries

    @property
    def num_bytes(self) -> dict[str, int]:
        return {"device": self.device_tier.used, "host": self.host_tier.used}


def _moved(item: EncodedItem, device: torch.device) -> EncodedItem:
    return EncodedItem(meta=item.meta, tensors={k: t.to(device) for k, t in item.tensors.items()})


def shared_copy(item: EncodedItem) -> EncodedItem:
    """A hit hands out its own metadata object (the receiver may keep or annotate it); tensors are shared."""
    meta = dataclasses.replace(
        item.meta,
        token_ids=list(item.meta.token_ids),
        token_types=list(item.meta.token_types),
        info=dict(item.meta.info),
    )
    return EncodedItem(meta=meta, tensors=dict(item.tensors))
