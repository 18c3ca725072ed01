"""One instance's event loop, as ``epd.launch.rank.RankServer.serve`` runs it, on the simulated clock.

A turn: poll the inbox and handle every message that has arrived (requests, items, KV caches), run
at most one tower call (``EncoderRole.step``), run one engine step, then decide when the next turn
is: at once while the engine has work, when the encoder's next batch may launch or its next decode
finishes, or when the next message arrives. A message that arrives during a turn waits for the turn
to end. Stretches of identical decode steps are planned as one run (``epd.sim.decode_run``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from epd.sim import decode_run
from epd.sim.topology import SimInstance

if TYPE_CHECKING:
    from epd.encoder import EncoderRole
    from epd.sim.encoder import SimPool
    from epd.sim.language import SimEngine
    from epd.sim.simulation import Simulation


class SimRank:
    def __init__(self, sim: Simulation, inst: SimInstance) -> None:
        self.sim = sim
        self.loop = sim.loop
        self.inst = inst
        self.encoder: EncoderRole | None = None
        self.pool: SimPool | None = None
        self.engine: SimEngine | None = None
        self.inbox: deque[tuple[Callable, tuple]] = deque()
        self._turn_at: float | None = None
        self._turn_gen = 0
        self.busy_until = 0.0
        self.can_fast_forward = False
        self.run: decode_run.DecodeRun | None = None

    # ---- messages ----------------------------------------------------------------------------------

    def send(self, delay_s: float, handler: Callable, *args) -> None:
        """A message to this rank that arrives ``delay_s`` from now; ``handler(*args)`` runs in its turn."""
        self.loop.at(self.loop.now + delay_s, self._arrive, handler, args)

    def _arrive(self, handler: Callable, args: tuple) -> None:
        if self.run is not None:
            self._cut(self.loop.now)
        self.inbox.append((handler, args))
        self._schedule(max(self.loop.now, self.busy_until))

    def _schedule(self, at: float, force: bool = False) -> None:
        if not force and self._turn_at is not None and self._turn_at <= at:
            return
        self._turn_at = at
        self._turn_gen += 1
        self.loop.at(at, self._turn, self._turn_gen)

    # ---- the loop ----------------------------------------------------------------------------------

    def _turn(self, gen: int) -> None:
        if gen != self._turn_gen:
            return  # superseded by an earlier turn
        self._turn_at = None
        if self.run is not None:  # a run of decode steps ends here
            self._commit(self.run.steps)
            self.run = None
        costs = self.sim.costs
        self.loop.advance(costs.poll_s)
        while self.inbox:
            handler, args = self.inbox.popleft()
            handler(*args)
        if self.encoder is not None and self.encoder.has_work:
            self.pool.collected(self.loop.now)
            for result in self.encoder.step():
                self.sim.deliver_item(self, result)
        if self.engine is not None and self.engine.has_work:
            if self._start_run():
                return
            for out in self.engine.step():
                self.sim.output(self, out)
        self.busy_until = self.loop.now
        if self.inst.role == "decode":
            self.sim.report_free_blocks(self)
        self._next_turn()

    def _start_run(self) -> bool:
        """Plan a run of decode steps from now; its end is this rank's next turn."""
        if not self.can_fast_forward or self.inbox or (self.encoder is not None and self.encoder.has_work):
            return False
        costs = self.sim.costs
        run = decode_run.plan(self.engine, self.loop.now, costs.poll_s, costs.send_s, self.sim.horizon)
        if run is None:
            return False
        self.run = run
        self.busy_until = run.next_turn
        self._schedule(run.next_turn, force=True)
        return True

    def _commit(self, upto: int) -> None:
        steps = decode_run.commit(self.run, upto)
        if steps:
            self.sim.tokens_out(self, self.run, steps)

    def _cut(self, time_s: float) -> None:
        """A message arrives during a run: the steps begun before it stand, the next turn handles it."""
        run = self.run
        upto = decode_run.steps_begun_before(run, time_s)
        self._commit(upto)
        self.run = None
        self.busy_until = run.turn_after(upto)
        self._schedule(self.busy_until, force=True)
        if self.inst.role == "decode":
            self.sim.report_free_blocks(self)

    def settle(self, time_s: float) -> None:
        """Commit the steps of a run whose turns were over by ``time_s`` (before others read this engine)."""
        if self.run is not None:
            self._commit(decode_run.steps_ended_by(self.run, time_s))

    def _next_turn(self) -> None:
        now = self.loop.now
        if self.inbox or (self.engine is not None and self.engine.has_work and not self.engine.stalled):
            self._schedule(now)
            return
        if self.encoder is None:
            return
        wakes = []
        if self.encoder._finished:  # noqa: SLF001 - items served at once (cache hits, failures)
            wakes.append(now)
        launch = self.encoder.rule.launch_at(self.encoder._ready)  # noqa: SLF001 - the batch rule's deadline
        if launch is not None:
            wakes.append(max(now, launch))
        decoded = self.pool.next_done()
        if decoded is not None:
            wakes.append(max(now, decoded))
        if wakes:
            self._schedule(min(wakes))

    @property
    def horizon(self) -> float:
        return math.inf
