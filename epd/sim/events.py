"""The simulated clock, its event queue, and devices that slow down when shared.

The loop is single-threaded. Handlers run at their event's time; a handler that does work (a
tower call, an engine step) moves the clock forward by that work's duration (``advance``), so
whatever it stamps afterwards carries the end time, and what it sends leaves then. The next event
sets the clock back to its own time, which may lie inside that stretch: other ranks work in
parallel.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable


class EventLoop:
    """Simulated time (``loop()`` reads it, so the loop itself is the clock epd's code is given)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.event_time = 0.0
        """The running event's own time (``now`` may have moved past it while its handler worked)."""
        self._heap: list[tuple[float, int, Callable, tuple]] = []
        self._order = itertools.count()
        self.events = 0

    def __call__(self) -> float:
        return self.now

    def at(self, time_s: float, fn: Callable, *args) -> None:
        """Run ``fn(*args)`` at ``time_s`` (events at the same time run in the order they were scheduled)."""
        heapq.heappush(self._heap, (time_s, next(self._order), fn, args))

    def advance(self, seconds: float) -> None:
        """The running handler worked for ``seconds``."""
        self.now += seconds

    def run(self, until: float = math.inf) -> None:
        """Run events in time order until none is left (or the next is past ``until``)."""
        heap = self._heap
        while heap:
            if heap[0][0] > until:
                return
            time_s, _, fn, args = heapq.heappop(heap)
            self.now = self.event_time = time_s
            self.events += 1
            fn(*args)

    @property
    def pending(self) -> int:
        return len(self._heap)


class Device:
    """A GPU, or a host's CPU cores, that several simulated workers may share.

    Work of ``w`` profiled seconds that starts at ``now`` on a device of ``capacity`` takes
    ``max(w, (w + o) / capacity)``, where ``o`` is how much of the work already booked on the device
    falls within ``[now, now + w]``: the device shares its time among what runs at once (a long piece
    that overlaps a short one is barely slowed, two equal ones on one GPU take twice as long). Work
    booked later does not stretch what started before it.
    """

    def __init__(self, name: str, capacity: float = 1.0) -> None:
        self.name = name
        self.capacity = capacity
        self._booked: list[tuple[float, float]] = []  # (end, start) of work not yet over (a heap)
        self.busy_s = 0.0

    def run(self, now: float, work_s: float) -> float:
        """Duration of ``work_s`` seconds of profiled work starting at ``now`` (and book it)."""
        if work_s <= 0:
            return 0.0
        booked = self._booked
        while booked and booked[0][0] <= now:
            heapq.heappop(booked)
        until = now + work_s
        overlap = sum(max(0.0, min(end, until) - max(start, now)) for end, start in booked)
        duration = max(work_s, (work_s + overlap) / self.capacity)
        heapq.heappush(booked, (now + duration, now))
        self.busy_s += work_s
        return duration

    def shared_at(self, now: float) -> bool:
        """Whether other work is running on the device at ``now``."""
        booked = self._booked
        while booked and booked[0][0] <= now:
            heapq.heappop(booked)
        return bool(booked)
