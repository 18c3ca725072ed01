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
    """``image`` (later ``video``, ``audio``)."""
    source: str
    """Path or URL of the media."""


class EncoderPolicy(ABC):
    """Chooses an encoder rank for every media item of a request.

    ``assign`` is called once per request in arrival order on the frontend; ``on_item_done`` is
    called when an encoder reports an item finished, for policies that track load.
    """

    def __init__(self, encoder_ranks: list[int]) -> None:
        if not encoder_ranks:
            raise ValueError("an encoder policy needs at least one encoder rank")
        self.encoder_ranks = list(encoder_ranks)

    @abstractmethod
    def assign(self, items: list[MediaItemInfo]) -> list[int]:
        """Encoder rank for each item, same order."""

    def on_item_done(self, rank: int, item: MediaItemInfo) -> None:  # noqa: B027 - optional hook
        """Feedback hook; stateless policies ignore it."""
