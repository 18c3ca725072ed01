"""Contract of an encoder-assignment policy, and the outstanding-work ledger policies share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from epd.scheduler.config import SchedulerConfig


@dataclass(frozen=True, kw_only=True)
class MediaItemInfo:
    """What the frontend knows about one media item when it assigns it (before any decoding)."""

    request_id: str
    index: int
    """Position of the item within its request."""
    modality: str
    """``image``, ``video`` or ``audio``."""
    source: str
    """Path or URL of the media."""
    est_tokens: int = 1
    """Estimated tokens the tower will produce for it (``epd.scheduler.cost``): the unit of encoder load."""
    content_hash: str | None = None
    """Hash of the media's content (``epd.scheduler.content_hash``), when the policy or the cache needs it."""

    @property
    def key(self) -> tuple[str, int]:
        return (self.request_id, self.index)


class EncoderLoad:
    """Outstanding encoder work per rank: estimated tokens and items assigned and not yet reported done.

    One ledger is shared by a policy and its inner policies (``modality``'s groups), so every policy
    sees the same load. Releasing an item twice (report from the encoder, then the request's end)
    is a no-op.
    """

    def __init__(self, ranks: list[int]) -> None:
        self.tokens = dict.fromkeys(ranks, 0)
        self.items = dict.fromkeys(ranks, 0)
        self._charged: dict[tuple[str, int], tuple[int, int]] = {}

    def charge(self, item: MediaItemInfo, rank: int) -> None:
        self.release(item)
        self._charged[item.key] = (rank, item.est_tokens)
        self.tokens[rank] += item.est_tokens
        self.items[rank] += 1

    def release(self, item: MediaItemInfo) -> bool:
        """Drain ``item``'s charge; False when it held none (already released or never charged)."""
        charged = self._charged.pop(item.key, None)
        if charged is None:
            return False
        rank, tokens = charged
        self.tokens[rank] -= tokens
        self.items[rank] -= 1
        return True


class EncoderPolicy(ABC):
    """Chooses an encoder rank for every media item of a request.

    ``encoders`` maps each encoder rank to the modalities it takes; ``choose`` only ever picks an
    encoder that takes the item's modality (the frontend refuses a request no encoder can serve
    before asking). The frontend calls ``assign`` once per request in arrival order, which charges
    the chosen encoders in ``load``; ``on_item_done`` when an encoder reports an item finished
    (and again, harmlessly, when its request ends), which drains it.

    Unless a policy says otherwise it places a request's items of one modality on one encoder
    (the request is the unit); ``split`` and ``cache_affinity`` decide per item.
    """

    needs_content_hash: ClassVar[bool] = False
    """Whether ``choose`` reads ``MediaItemInfo.content_hash`` (the frontend then computes it)."""

    def __init__(
        self, encoders: dict[int, tuple[str, ...]], cfg: SchedulerConfig | None = None, load: EncoderLoad | None = None
    ) -> None:
        if not encoders:
            raise ValueError("an encoder policy needs at least one encoder rank")
        self.encoders = dict(encoders)
        self.cfg = cfg or SchedulerConfig()
        self.load = load or EncoderLoad(list(encoders))

    def candidates(self, modality: str) -> list[int]:
        """Encoder ranks that take ``modality``, in rank order; ``ValueError`` when none does."""
        ranks = [rank for rank, mods in self.encoders.items() if modality in mods]
        if not ranks:
            raise ValueError(f"no encoder takes {modality}")
        return ranks

    def assign(self, items: list[MediaItemInfo]) -> list[int]:
        """Encoder rank for each item, same order; the items are charged to their encoders."""
        ranks = self.choose(items) if items else []
        for item, rank in zip(items, ranks, strict=True):
            assert item.modality in self.encoders[rank], f"policy put {item.modality} on encoder {rank}"
            self.load.charge(item, rank)
        return ranks

    @abstractmethod
    def choose(self, items: list[MediaItemInfo]) -> list[int]:
        """Encoder rank for each item of one request, same order (no charging: ``assign`` does it)."""

    def on_item_done(self, rank: int, item: MediaItemInfo) -> None:
        """An encoder finished ``item`` (or its request ended): its outstanding work drains."""
        self.load.release(item)
