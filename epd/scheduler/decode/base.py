"""Contract of a decode-instance policy, and the ledger of what each decode instance holds."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class DecodeRequest:
    """What the prefill side knows about a request when it hands it to a decode instance."""

    request_id: str
    num_tokens: int
    """Tokens whose KV cache moves (the prompt and the first sampled token)."""
    max_tokens: int = 1
    """Output tokens the request may still produce (its decode work)."""


class DecodeLoad:
    """Per decode instance (leader rank): free KV blocks as it last reported them, and the blocks of
    requests sent to it that its report does not show yet (sent, not yet admitted there).

    A decode instance reports ``report(rank, free_blocks)`` after its steps; the prefill side
    ``charge``s a request to the instance it picked and the decode instance ``admit``s it once
    its blocks are allocated (its next report counts them). Admitting twice is a no-op.
    """

    def __init__(self, ranks: list[int], block_size: int) -> None:
        if block_size < 1:
            raise ValueError(f"block_size={block_size}: a KV block holds at least one token")
        self.block_size = block_size
        self.free_blocks = dict.fromkeys(ranks, 0)
        self.pending_blocks = dict.fromkeys(ranks, 0)
        self.requests = dict.fromkeys(ranks, 0)
        """Requests charged to each instance and not finished there."""
        self._pending: dict[str, tuple[int, int]] = {}

    def report(self, rank: int, free_blocks: int) -> None:
        self.free_blocks[rank] = free_blocks

    def charge(self, rank: int, req: DecodeRequest) -> None:
        blocks = -(-req.num_tokens // self.block_size)
        self._pending[req.request_id] = (rank, blocks)
        self.pending_blocks[rank] += blocks
        self.requests[rank] += 1

    def admit(self, request_id: str) -> None:
        """The decode instance allocated the request's blocks: they leave the pending count."""
        entry = self._pending.pop(request_id, None)
        if entry is not None:
            rank, blocks = entry
            self.pending_blocks[rank] -= blocks

    def finish(self, rank: int, request_id: str) -> None:
        """The request ended on ``rank`` (finished, failed or aborted)."""
        self.admit(request_id)
        self.requests[rank] -= 1

    def available_blocks(self, rank: int) -> int:
        """Free blocks the instance would have once every request sent to it is admitted."""
        return self.free_blocks[rank] - self.pending_blocks[rank]


class DecodePolicy(ABC):
    """Chooses the decode instance (leader rank) that continues a prefilled request.

    ``ranks`` are the decode instances' leader ranks. The prefill side calls ``assign`` once per
    request, right after its first token, which charges the chosen instance in ``load``; the decode
    instance calls ``load.admit`` when the request's KV blocks are allocated there, ``load.report``
    with its free blocks after its steps, and ``load.finish`` when the request ends. ``choose``
    reads ``load`` and never changes it.
    """

    def __init__(self, ranks: list[int], block_size: int = 16, load: DecodeLoad | None = None) -> None:
        if not ranks:
            raise ValueError("a decode policy needs at least one decode instance")
        self.ranks = list(ranks)
        self.load = load or DecodeLoad(self.ranks, block_size)

    def assign(self, req: DecodeRequest) -> int:
        """The decode instance for ``req``, charged with its KV blocks."""
        rank = self.choose(req)
        assert rank in self.load.free_blocks, f"decode policy chose {rank}, not a decode instance"
        self.load.charge(rank, req)
        return rank

    @abstractmethod
    def choose(self, req: DecodeRequest) -> int:
        """The decode instance for ``req`` (no charging: ``assign`` does it)."""
