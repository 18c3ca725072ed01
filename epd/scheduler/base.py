"""Contract of an encoder-assignment policy."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


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


class EncoderPolicy(ABC):
    """Chooses an encoder rank for every media item of a request.

    ``encoders`` maps each encoder rank to the modalities it takes; a policy only ever picks an
    encoder that takes the item's modality (the frontend refuses a request no encoder can serve
    before asking). ``assign`` is called once per request in arrival order on the frontend;
    ``on_item_done`` when an encoder reports an item finished, for policies that track load.
    """

    def __init__(self, encoders: dict[int, tuple[str, ...]]) -> None:
        if not encoders:
            raise ValueError("an encoder policy needs at least one encoder rank")
        self.encoders = dict(encoders)

    def candidates(self, modality: str) -> list[int]:
        """Encoder ranks that take ``modality``, in rank order."""
        return [rank for rank, mods in self.encoders.items() if modality in mods]

    @abstractmethod
    def assign(self, items: list[MediaItemInfo]) -> list[int]:
        """Encoder rank for each item, same order."""

    def on_item_done(self, rank: int, item: MediaItemInfo) -> None:  # noqa: B027 - optional hook
        """Feedback hook; stateless policies ignore it."""
