"""Runs of identical decode steps, planned at once and committed step by step as time passes.

When every running sequence of an engine decodes, none finishes within the run, nothing waiting can
be admitted (nothing ready, or its head is short of blocks, which decodes only make worse) and the
free blocks cover the run's growth, ``Scheduler.schedule`` would make the same batch at every step:
the run's steps and their times follow from the cost model alone. ``plan`` computes them without
touching the engine; ``commit`` applies the first steps (token counts, block allocations in the
order ``schedule`` makes them: step by step, in running order; prefix-cache registration).

The rank commits a run when it ends, or cuts it when a message arrives: the steps whose turn began
before the message are committed, the message is handled at the next turn, as in the real loop. A
decode instance's free blocks are settled before the prefill side reads them. Only ranks that have
their device to themselves plan runs (a neighbour's work would change the steps' times).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from epd.language.sequence import Sequence, Status
from epd.sim.language import SimEngine


@dataclass(eq=False)
class DecodeRun:
    """Planned decode steps: step i's turn starts at ``turns[i]`` and its tokens exist at ``ends[i]``."""

    engine: SimEngine
    seqs: list[Sequence]
    start_computed: list[int]
    turns: list[float]
    ends: list[float]
    works: list[float]
    next_turn: float
    """When the turn after the last planned step starts."""
    done: int = 0
    """Steps committed so far."""
    tokens: list[tuple[list[str], list[float]]] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.ends)

    def turn_after(self, step: int) -> float:
        """Start of the turn that follows ``step`` steps."""
        return self.turns[step] if step < self.steps else self.next_turn


def plan(engine: SimEngine, now: float, poll_s: float, send_s: float, horizon: float) -> DecodeRun | None:
    """The run starting at ``now`` (the current turn polled already), or None when there is none worth it."""
    running = engine.scheduler.running
    cfg = engine.cfg
    if len(running) < 1 or len(running) > cfg.max_batch_tokens:
        return None
    left = 1 << 30
    for seq in running:
        if seq.status is not Status.RUNNING or seq.error is not None or not seq.prefill_done:
            return None
        left = min(left, seq.request.sampling.max_tokens - len(seq.output_ids))
    if left < 3 or not _admission_blocked(engine, len(running)):
        return None
    if engine._errored:  # noqa: SLF001 - a failure is due: step handles it
        return None
    steps = min(left - 1, _steps_blocks_allow(engine, running))
    if steps < 2:
        return None
    # step i's work is linear in i (its context grows by one token per sequence): times in closed form
    batch, context = len(running), sum(seq.num_computed for seq in running)
    w0 = engine.costs.step_s([], batch, context, engine.tp)
    slope = engine.costs.step_s([], batch, context + batch, engine.tp) - w0
    i = np.arange(steps, dtype=np.float64)
    works = w0 + slope * i
    gap = batch * send_s + poll_s  # after each step: its token messages, then the next turn's poll
    starts = now + i * gap + np.concatenate(([0.0], np.cumsum(works[:-1])))
    turns = starts - poll_s
    keep = int(np.searchsorted(turns, horizon, side="left"))
    if keep < 2:
        return None
    ends = starts[:keep] + works[:keep]
    return DecodeRun(engine=engine, seqs=list(running), start_computed=[s.num_computed for s in running],
                     turns=turns[:keep].tolist(), ends=ends.tolist(), works=works[:keep].tolist(),
                     next_turn=float(ends[-1] + batch * send_s))  # fmt: skip


def commit(run: DecodeRun, upto: int) -> range:
    """Apply the run's steps up to ``upto`` (exclusive) to the engine; returns the steps applied."""
    first, upto = run.done, min(upto, run.steps)
    if upto <= first:
        return range(0)
    engine = run.engine
    _grow_in_order(engine, run, first, upto)
    k = upto - first
    for seq in run.seqs:
        seq.num_computed += k
        seq.output_ids += [0] * k
        seq.token_ids += [0] * k
        engine.blocks.computed(seq)
    engine.steps += k
    work = float(sum(run.works[first:upto]))
    engine.busy_s += work
    engine.device.count(engine.owner, work)  # the device is the engine's alone here: counted in one sum
    run.done = upto
    return range(first, upto)


def steps_begun_before(run: DecodeRun, time_s: float) -> int:
    """How many of the run's steps had their turn start before ``time_s`` (at least the first)."""
    return max(1, bisect.bisect_left(run.turns, time_s))


def steps_ended_by(run: DecodeRun, time_s: float) -> int:
    """How many steps had their whole turn (step and sends) over by ``time_s``."""
    return sum(1 for i in range(run.steps) if run.turn_after(i + 1) <= time_s)


def _admission_blocked(engine: SimEngine, batch: int) -> bool:
    """Whether ``Scheduler._admit`` admits nothing now and during decode steps of ``batch``."""
    budget = engine.cfg.max_batch_tokens - batch
    if budget <= 0 or batch >= engine.cfg.max_num_seqs:
        return True
    ready = engine.scheduler.policy.order([s for s in engine.scheduler.waiting if s.ready and s.error is None])
    if not ready:
        return True
    head, blocks = ready[0], engine.blocks
    if head.num_tokens > blocks.capacity_tokens:
        return False  # schedule fails it: let it
    if head.kv_pending is not None:  # prefilled elsewhere: all its blocks fresh, no budget split
        return blocks.blocks_for(head.num_tokens) > blocks.num_free
    cached = blocks.match(head)
    start = len(cached) * blocks.block_size
    fresh = blocks.blocks_for(start + min(head.num_tokens - start, budget)) - len(cached)
    reusable = sum(1 for b in cached if blocks.ref[b] == 0)
    # free - reusable only shrinks while decodes take blocks, and fresh only grows: it stays blocked
    return fresh > blocks.num_free - reusable


def _steps_blocks_allow(engine: SimEngine, running: list[Sequence]) -> int:
    """Most decode steps whose new blocks the free list covers (no preemption within them).

    Step k (from 0) reserves ``c + k + 1`` tokens of a sequence with ``c`` computed, so the sequence
    first needs a new block at step ``f = len(table) * bs - c`` and every ``bs`` steps after; with
    every ``f`` within one period the n-th block of all is needed at step ``sorted(f)[n % B] + n // B * bs``.
    """
    free, bs = engine.blocks.num_free, engine.blocks.block_size
    firsts = sorted(len(s.block_table) * bs - s.num_computed for s in running)
    if firsts[0] >= 0 and firsts[-1] - firsts[0] < bs:
        return firsts[free % len(firsts)] + free // len(firsts) * bs
    lo, hi = 0, 1 << 20  # tables of uneven slack: search
    while lo < hi:
        mid = (lo + hi + 1) // 2
        need = sum(max(0, -(-(s.num_computed + mid) // bs) - len(s.block_table)) for s in running)
        if need <= free:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _grow_in_order(engine: SimEngine, run: DecodeRun, first: int, upto: int) -> None:
    """Blocks of steps [first, upto) in ``schedule``'s order: step by step, in running order. Step i
    reserves ``start + i + 1`` tokens of each sequence."""
    bs = engine.blocks.block_size
    needs = []
    for pos, (seq, c0) in enumerate(zip(run.seqs, run.start_computed, strict=True)):
        for block in range(len(seq.block_table), -(-(c0 + upto) // bs)):
            step = max(0, block * bs - c0)  # the first step whose reservation covers this block
            needs.append((max(step, first), pos, seq, c0 + max(step, first) + 1))
    needs.sort(key=lambda n: (n[0], n[1]))
    for _, _, seq, tokens in needs:
        engine.blocks.grow(seq, tokens)
