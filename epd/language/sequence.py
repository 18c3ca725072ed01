"""Per-request state on a language instance."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from epd.language.decoder import KVCache
from epd.models import ItemMeta
from epd.protocol import ItemRef, NewRequest


@dataclass
class Sequence:
    """A request from arrival on the language instance to its last token."""

    request: NewRequest
    items: dict[int, tuple[ItemMeta, dict[str, torch.Tensor]]] = field(default_factory=dict)
    error: str | None = None
    timestamps: dict[str, float] = field(default_factory=dict)
    cache: KVCache = field(default_factory=KVCache)
    prompt_embeds: torch.Tensor | None = None  # [L, H] merged, until prefill
    prompt_positions: torch.Tensor | None = None  # [3, L], until prefill
    deepstack: tuple[torch.Tensor, torch.Tensor] | None = None  # prompt rows [M], features [k, M, H], until prefill
    prompt_len: int = 0
    rope_delta: float = 0  # Qwen3-Omni's positions are fractional
    output_ids: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None

    @property
    def id(self) -> str:
        return self.request.request_id

    @property
    def item_refs(self) -> list[ItemRef]:
        return self.request.items

    @property
    def ready(self) -> bool:
        """All media embeddings are here (or the request already failed)."""
        return self.error is not None or self.prompt_embeds is not None or len(self.items) == len(self.request.items)

    def stamp(self, stage: str) -> None:
        self.timestamps[stage] = time.time()

    def merge_item_timestamps(self, item_ts: dict[str, float]) -> None:
        """Per request, the encoder stages span from the first item's start to the last item's end."""
        for stage, t in item_ts.items():
            prev = self.timestamps.get(stage)
            if prev is None or (t < prev if stage.endswith("_start") else t > prev):
                self.timestamps[stage] = t
