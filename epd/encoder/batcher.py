"""Which decoded items the next tower call takes: cross-request batching under a token budget.

Pure policy over the ready list (no tensors): items leave in arrival order; the call launches when
the ready items fill the token budget or the item cap, or when the oldest has waited
``max_wait_ms``. The first item always fits, however large, so nothing starves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class Ready(Generic[T]):
    """A decoded item waiting for the tower."""

    payload: T
    num_tokens: int
    ready_at: float
    """When its decode finished (seconds, ``epd.clock.now()``)."""


@dataclass(frozen=True, kw_only=True)
class BatchRule:
    max_batch_tokens: int
    max_batch_items: int
    max_wait_s: float

    def launch_at(self, ready: list[Ready]) -> float | None:
        """When the tower should take a batch from ``ready``: now if full, else the oldest's deadline."""
        if not ready:
            return None
        if sum(r.num_tokens for r in ready) >= self.max_batch_tokens or len(ready) >= self.max_batch_items:
            return 0.0
        return min(r.ready_at for r in ready) + self.max_wait_s

    def take(self, ready: list[Ready], now: float) -> list[Ready]:
        """Remove and return the next batch from ``ready`` if it should launch at ``now``, else []."""
        at = self.launch_at(ready)
        if at is None or at > now:
            return []
        count, tokens = 0, 0
        for r in ready:
            if count and (tokens + r.num_tokens > self.max_batch_tokens or count >= self.max_batch_items):
                break
            count += 1
            tokens += r.num_tokens
        batch = ready[:count]
        del ready[:count]
        return batch
