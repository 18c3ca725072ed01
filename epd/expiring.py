"""Bounded memory of recent events: ids remembered for a while, then forgotten.

A serving process runs for days: a set of every request id it ever failed, or of every item that
arrived before its request, would grow without end. These keep an entry for ``ttl_s`` seconds (and
at most ``max_entries`` of them), which is as long as a late message about it can still arrive.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ExpiringDict(Generic[K, V]):
    """A dict whose entries vanish ``ttl_s`` seconds after they were set (oldest first past ``max_entries``)."""

    def __init__(self, ttl_s: float, max_entries: int = 1 << 20) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def _expire(self, now: float) -> None:
        while self._items:
            key, (stamp, _) = next(iter(self._items.items()))
            if now - stamp <= self.ttl_s and len(self._items) <= self.max_entries:
                break
            del self._items[key]

    def __setitem__(self, key: K, value: V) -> None:
        now = time.monotonic()
        self._items.pop(key, None)
        self._items[key] = (now, value)
        self._expire(now)

    def get(self, key: K, default=None):
        self._expire(time.monotonic())
        item = self._items.get(key)
        return default if item is None else item[1]

    def pop(self, key: K, default=None):
        item = self._items.pop(key, None)
        return default if item is None else item[1]

    def setdefault(self, key: K, value: V) -> V:
        found = self.get(key)
        if found is None:
            self[key] = value
            return value
        return found

    def __contains__(self, key: object) -> bool:
        self._expire(time.monotonic())
        return key in self._items

    def __len__(self) -> int:
        self._expire(time.monotonic())
        return len(self._items)


class ExpiringSet(Generic[K]):
    """A set whose members vanish ``ttl_s`` seconds after they were added."""

    def __init__(self, ttl_s: float, max_entries: int = 1 << 20) -> None:
        self._items: ExpiringDict[K, bool] = ExpiringDict(ttl_s, max_entries)

    def add(self, key: K) -> None:
        self._items[key] = True

    def discard(self, key: K) -> None:
        self._items.pop(key)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
