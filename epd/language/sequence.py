"""Per-request state on a language instance."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from epd import clock
from epd.models import ItemMeta
from epd.protocol import NewRequest


class Status(enum.Enum):
    WAITING = "waiting"  # embeddings on the way, or not admitted yet (or preempted)
    RUNNING = "running"  # holds KV blocks; prefilling or decoding
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """A request from its arrival on the language instance to its last token.

    ``token_ids`` is the expanded prompt (once every item arrived) followed by the generated tokens;
    ``num_computed`` of them have their keys and values in the KV cache (blocks ``block_table``).
    """

    request: NewRequest
    items: dict[int, tuple[ItemMeta, dict[str, torch.Tensor]]] = field(default_factory=dict)
    error: str | None = None
    timestamps: dict[str, float] = field(default_factory=dict)
    status: Status = Status.WAITING
    # the expanded prompt, set by the engine once every item arrived (with encode-prefill overlap,
    # first its prefix up to the first missing item, then longer as items arrive: ``complete`` tells)
    token_ids: list[int] = field(default_factory=list)
    prepared_items: int = 0  # items merged into token_ids so far
    prompt_len: int = 0
    prompt_embeds: torch.Tensor | None = None  # [L, H] merged text + media rows; None for text-only prompts
    positions: torch.Tensor | None = None  # [3, L] float32 rope positions; None = 0..L-1 on every axis
    rope_delta: float = 0.0  # decode positions continue at index + rope_delta (fractional for Qwen3-Omni)
    deepstack: tuple[torch.Tensor, torch.Tensor] | None = None  # prompt rows [M] ascending, features [k, M, H]
    item_spans: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, content hash) per item
    # the media rows of the prompt and their embeddings [M] / [M, H], kept where ``prompt_embeds`` is not
    # (a decode instance, a tensor-parallel one): each step looks the text rows up and places these; a
    # prefill instance hands them over with the KV cache, so decode can recompute a preempted prompt
    mm_rows: torch.Tensor | None = None
    mm_embeds: torch.Tensor | None = None
    kv_pending: torch.Tensor | None = None  # decode instance: KV received, not yet in blocks
    kv_transfer_bytes: int = 0
    # KV cache
    num_computed: int = 0
    num_cached_prompt: int = 0  # prompt tokens served by the prefix cache at admission
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # of the full blocks of token_ids, in order
    num_registered: int = 0  # leading full blocks of block_table offered to the prefix cache
    unregistered: list[int] = field(default_factory=list)  # of those, the ones another block's copy held back
    evictions_seen: int = 0  # the block manager's eviction count when they were last offered
    num_preemptions: int = 0
    output_ids: list[int] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.request.request_id

    @property
    def prepared(self) -> bool:
        return bool(self.token_ids)

    @property
    def complete(self) -> bool:
        """The whole prompt is in ``token_ids`` (every item merged), not just its prefix."""
        return self.prepared and self.prepared_items == len(self.request.items)

    @property
    def ready(self) -> bool:
        """There is work the scheduler can give it (or the request already failed): its prompt is
        complete, or a known prefix of it is not computed yet."""
        if self.error is not None:
            return True
        return self.prepared and (self.complete or self.num_computed < len(self.token_ids))

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def prefill_done(self) -> bool:
        """Every token but the last generated one has its KV: the next step decodes."""
        return self.num_computed >= self.num_tokens - 1 and bool(self.output_ids) and self.num_computed > 0

    def stamp(self, stage: str) -> None:
        self.timestamps[stage] = clock.now()

    def merge_item_timestamps(self, item_ts: dict[str, float]) -> None:
        """Per request, the encoder stages span from the first item's start to the last item's end."""
        for stage, t in item_ts.items():
            prev = self.timestamps.get(stage)
            if prev is None or (t < prev if stage.endswith("_start") else t > prev):
                self.timestamps[stage] = t
