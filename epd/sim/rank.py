"""One instance's event loop, as ``epd.launch.rank.RankServer.serve`` runs it, on the simulated clock.

A turn: handle every message that has arrived (requests, items, KV caches), run at most one tower
call (``EncoderRole.step``), run one engine step, then decide when the next turn is: at once while
the engine has work, when the encoder's next batch may launch or its next decode finishes, or when
the next message arrives. A message that arrives during a turn waits for the turn to end.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

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
        self._incoming: list[float] = []  # arrival times of messages on their way here (a heap)
        self._turn_at: float | None = None
        self._turn_gen = 0
        self.busy_until = 0.0
        self.can_fast_forward = False

    # ---- messages ----------------------------------------------------------------------------------

    def send(self, delay_s: float, handler: Callable, *args) -> None:
        """A message to this rank that arrives ``delay_s`` from now; ``handler(*args)`` runs in its turn."""
        at = self.loop.now + delay_s
        heapq.heappush(self._incoming, at)
        self.loop.at(at, self._arrive, handler, args)

    def _arrive(self, handler: Callable, args: tuple) -> None:
        heapq.heappop(self._incoming)
        self.inbox.append((handler, args))
        self._schedule(max(self.loop.now, self.busy_until))

    def _schedule(self, at: float) -> None:
        if self._turn_at is not None and self._turn_at <= at:
            return
        self._turn_at = at
        self._turn_gen += 1
        self.loop.at(at, self._turn, self._turn_gen)

    # ---- the loop ----------------------------------------------------------------------------------

    def _turn(self, gen: int) -> None:
        if gen != self._turn_gen:
            return  # superseded by an earlier turn
        self._turn_at = None
        while self.inbox:
            handler, args = self.inbox.popleft()
            handler(*args)
        if self.engine is not None and self.engine.kv_waiting:
            self.engine.admit_kv()
        if self.encoder is not None and self.encoder.has_work:
            self.pool.collected(self.loop.now)
            for result in self.encoder.step():
                self.sim.deliver_item(self, result)
        if self.engine is not None and self.engine.has_work:
            run = self._decode_run()
            if run is not None:
                self.sim.tokens_out(self, *run)
            else:
                for out in self.engine.step():
                    self.sim.output(self, out)
        self.busy_until = self.loop.now
        if self.inst.role == "decode":
            self.sim.report_free_blocks(self)
        self._next_turn()

    def _decode_run(self):
        if not self.can_fast_forward or (self.encoder is not None and self.encoder.has_work):
            return None
        if self.inbox:
            return None
        horizon = min(self._incoming[0] if self._incoming else math.inf, self.sim.horizon)
        return self.engine.decode_run(horizon)

    def _next_turn(self) -> None:
        now = self.loop.now
        if self.inbox or (self.engine is not None and self.engine.has_work):
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
