"""The language scheduler: pure CPU policy over sequences and KV blocks, no tensors.

Each step gets a token budget (``engine.max_batch_tokens``). Running sequences come first, oldest
first: a decoding one takes one token, a prefilling one its next chunk. Then waiting sequences
whose embeddings are all here are admitted in the order of the admission policy (FCFS by default)
while budget, sequence slots and blocks last; a sequence still waiting for embeddings is passed
over without blocking the ones behind it. When a running sequence needs a block and none is free,
the newest running sequence is preempted: its blocks are released (prefix-cached blocks stay
matchable) and it is recomputed from its tokens when readmitted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from epd.language.block_manager import BlockManager
from epd.language.config import EngineConfig
from epd.language.policies import ADMISSION_POLICIES
from epd.language.sequence import Sequence, Status


@dataclass
class Batch:
    """One step's work: prefill chunks (sequence, tokens) and decoding sequences; ``loaded`` are
    prefilled sequences (from a prefill instance) admitted this step, whose KV the engine copies in
    before the step runs."""

    prefills: list[tuple[Sequence, int]] = field(default_factory=list)
    decodes: list[Sequence] = field(default_factory=list)
    loaded: list[Sequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    failed: list[tuple[Sequence, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.prefills or self.decodes)

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.prefills) + len(self.decodes)


class Scheduler:
    def __init__(self, cfg: EngineConfig, blocks: BlockManager) -> None:
        self.cfg = cfg
        self.blocks = blocks
        self.policy = ADMISSION_POLICIES.get(cfg.policy)()
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Drop ``seq`` wherever it is and free its blocks (finished, failed or aborted)."""
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.release(seq)
        seq.status = Status.FINISHED

    @property
    def has_work(self) -> bool:
        return any(seq.ready for seq in self.running) or any(seq.ready for seq in self.waiting)

    def schedule(self) -> Batch:
        batch = Batch()
        budget = self.cfg.max_batch_tokens
        for seq in list(self.running):
            if seq.status is not Status.RUNNING or budget <= 0 or not seq.ready:
                continue  # (not ready: its computed prefix waits for the next media item)
            n = 1 if seq.prefill_done else min(seq.num_tokens - seq.num_computed, budget)
            if not self._reserve(seq, seq.num_computed + n, batch):
                continue
            budget -= n
            if seq.prefill_done:
                batch.decodes.append(seq)
            else:
                batch.prefills.append((seq, n))
        if not batch.preempted:
            budget = self._admit(batch, budget)
        return batch

    def _reserve(self, seq: Sequence, num_tokens: int, batch: Batch) -> bool:
        """Blocks for ``num_tokens`` of ``seq``, preempting the newest running sequences if needed."""
        while not self.blocks.can_grow(seq, num_tokens):
            victim = self.running[-1]
            if victim is seq and len(self.running) == 1:
                self._fail(
                    seq,
                    batch,
                    f"needs {num_tokens} tokens of KV cache, over the {self.blocks.capacity_tokens} there are",
                )
                return False
            self._preempt(victim, batch)
            if victim is seq:
                return False
        self.blocks.grow(seq, num_tokens)
        return True

    def _preempt(self, seq: Sequence, batch: Batch) -> None:
        self.running.remove(seq)
        self.blocks.release(seq)
        seq.status = Status.WAITING
        seq.num_preemptions += 1
        self.waiting.insert(0, seq)  # first in line to come back
        batch.preempted.append(seq)
        for i, (s, _) in enumerate(batch.prefills):
            if s is seq:
                del batch.prefills[i]
                break
        if seq in batch.decodes:
            batch.decodes.remove(seq)

    def _fail(self, seq: Sequence, batch: Batch, reason: str) -> None:
        self.remove(seq)
        batch.failed.append((seq, reason))

    def _admit(self, batch: Batch, budget: int) -> int:
        for seq in self.policy.order([s for s in self.waiting if s.ready and s.error is None]):
            if budget <= 0 or len(self.running) >= self.cfg.max_num_seqs:
                break
            if seq.num_tokens > self.blocks.capacity_tokens:
                self.waiting.remove(seq)
                self._fail(
                    seq, batch, f"has {seq.num_tokens} tokens, over the KV cache's {self.blocks.capacity_tokens}"
                )
                continue
            if seq.kv_pending is not None:  # prefilled elsewhere: blocks for its KV, then it decodes
                cached_prompt = seq.num_cached_prompt  # the prefill instance's count, kept for the record
                if not self.blocks.admit(seq, [], seq.num_tokens):
                    break
                seq.num_computed, seq.num_cached_prompt = seq.prompt_len, cached_prompt
                self.waiting.remove(seq)
                self.running.append(seq)
                seq.status = Status.RUNNING
                batch.loaded.append(seq)
                batch.decodes.append(seq)
                budget -= 1
                continue
            cached = self.blocks.match(seq)
            start = len(cached) * self.blocks.block_size
            n = min(seq.num_tokens - start, budget)
            if not self.blocks.admit(seq, cached, start + n):
                break  # FCFS: the head waits for blocks rather than being overtaken
            self.waiting.remove(seq)
            self.running.append(seq)
            seq.status = Status.RUNNING
            batch.prefills.append((seq, n))
            budget -= n
        return budget
