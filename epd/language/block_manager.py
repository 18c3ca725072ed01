"""KV-cache blocks: allocation, reference counts and the prefix cache.

A block holds ``block_size`` consecutive tokens of one sequence. A full block gets a hash that
chains its predecessor's hash, its token ids and, for media rows, the content hash of the item and
the row's offset in it (media rows all carry the same pad id). Blocks of finished or preempted
sequences keep their hash while free, so a later prompt with the same prefix (a repeated system
prompt, the same image in the next turn of a chat) takes them instead of recomputing; the least
recently freed is evicted first. Block 0 is never handed out: padded rows of CUDA-graph batches
write into it.
"""

from __future__ import annotations

from collections import OrderedDict

from epd.language.sequence import Sequence


def block_hashes(seq: Sequence, block_size: int, start: int = 0) -> list[int]:
    """Hashes of ``seq``'s full blocks from block ``start`` on (chained onto the hashes already known)."""
    hashes = list(seq.block_hashes[:start])
    prev = hashes[-1] if hashes else 0
    for b in range(start, len(seq.token_ids) // block_size):
        lo, hi = b * block_size, (b + 1) * block_size
        media = tuple((h, max(lo, s) - s) for s, e, h in seq.item_spans if s < hi and e > lo)
        prev = hash((prev, tuple(seq.token_ids[lo:hi]), media))
        hashes.append(prev)
    return hashes


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, prefix_cache: bool) -> None:
        if num_blocks < 2:
            raise ValueError(f"the KV cache needs at least 2 blocks, got {num_blocks}")
        self.block_size = block_size
        self.prefix_cache = prefix_cache
        self.ref = [0] * num_blocks
        self.hash_of: list[int | None] = [None] * num_blocks
        self.cached: dict[int, int] = {}  # block hash → block
        self.free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(1, num_blocks))  # LRU first
        self.evictions = 0  # cached copies dropped so far (a block's hash freed for another block)
        self.hits = 0  # prompt tokens served from the cache
        self.queries = 0  # prompt tokens looked up

    @property
    def capacity_tokens(self) -> int:
        return (len(self.ref) - 1) * self.block_size

    @property
    def num_free(self) -> int:
        return len(self.free)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def match(self, seq: Sequence) -> list[int]:
        """Cached blocks of ``seq``'s longest cached prefix, short of its last token (which must be computed)."""
        if not self.prefix_cache:
            return []
        seq.block_hashes = block_hashes(seq, self.block_size, len(seq.block_hashes))
        usable = (seq.num_tokens - 1) // self.block_size
        out = []
        for h in seq.block_hashes[:usable]:
            block = self.cached.get(h)
            if block is None:
                break
            out.append(block)
        return out

    def admit(self, seq: Sequence, cached: list[int], num_tokens: int) -> bool:
        """Give ``seq`` the ``cached`` blocks plus fresh ones for ``num_tokens`` tokens in all; False if short."""
        fresh = self.blocks_for(num_tokens) - len(cached)
        reusable = sum(1 for b in cached if self.ref[b] == 0)  # cached blocks that sit in the free list
        if fresh > self.num_free - reusable:
            return False
        for b in cached:
            if self.ref[b] == 0:
                del self.free[b]
            self.ref[b] += 1
        seq.block_table = list(cached)
        seq.num_registered, seq.unregistered = 0, []
        seq.num_computed = seq.num_cached_prompt = len(cached) * self.block_size
        self.hits += seq.num_computed
        self.queries += seq.prompt_len
        self._grow(seq, num_tokens)
        return True

    def can_grow(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_for(num_tokens) - len(seq.block_table) <= self.num_free

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        """Blocks for ``num_tokens`` tokens of ``seq`` in all (``can_grow`` must hold)."""
        self._grow(seq, num_tokens)

    def _grow(self, seq: Sequence, num_tokens: int) -> None:
        while len(seq.block_table) < self.blocks_for(num_tokens):
            block, _ = self.free.popitem(last=False)  # least recently freed
            if self.hash_of[block] is not None:
                self.cached.pop(self.hash_of[block], None)
                self.hash_of[block] = None
                self.evictions += 1
            self.ref[block] = 1
            seq.block_table.append(block)

    def computed(self, seq: Sequence) -> None:
        """Register the blocks that ``seq``'s computed tokens filled, so later prompts can share them."""
        if not self.prefix_cache:
            return
        full = min(seq.num_computed, seq.num_tokens) // self.block_size
        known = len(seq.block_hashes)
        if full > known:
            seq.block_hashes = block_hashes(seq, self.block_size, known)
        # the blocks filled since the last call: O(new blocks) per step, not O(context); earlier ones
        # whose hash another block held are tried again once some cached copy was evicted
        offered = list(range(seq.num_registered, full))
        if seq.unregistered and seq.evictions_seen != self.evictions:
            offered, seq.unregistered = seq.unregistered + offered, []
        seq.evictions_seen = self.evictions
        seq.unregistered += [i for i in offered if not self._register(seq.block_table[i], seq.block_hashes[i])]
        seq.num_registered = max(seq.num_registered, full)

    def _register(self, block: int, h: int) -> bool:
        """Make ``block`` the cached copy of hash ``h``; False while another block is that copy."""
        if self.hash_of[block] is not None:  # already a cached copy (it keeps its hash while in use)
            return True
        if h in self.cached:
            return False
        self.hash_of[block] = h
        self.cached[h] = block
        return True

    def release(self, seq: Sequence) -> None:
        """Return ``seq``'s blocks; hashed ones stay matchable until evicted. The tail goes in first, so it is
        evicted before the prefix blocks that other prompts are likelier to share."""
        for block in reversed(seq.block_table):
            self.ref[block] -= 1
            if self.ref[block] == 0:
                self.free[block] = None
        seq.block_table = []
        seq.num_computed = 0
