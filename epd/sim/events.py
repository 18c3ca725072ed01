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
    booked later does not stretch what started before it: durations are fixed when work starts,
    because epd's own code, run on the simulated clock, moves that clock by them.

    With ``anticipate`` (``sim.contention=anticipate``), work also expects the other owners' recent
    demand to go on while it runs: ``w * (1 + rho) / capacity`` at least, where ``rho`` is the work
    other owners ran in the last ``ANTICIPATE_WINDOWS * w`` (in device-seconds per second). Time-slicing
    slows the work that started first as much as what joins it (a tower call among a language rank's
    decode steps takes about twice its time on one GPU, and so does each step); booking alone charges
    only the latecomers, which is why it is optimistic under load.
    """

    ANTICIPATE_WINDOWS = 2.0
    HISTORY_S = 2.0
    """Bookings kept for the demand estimate (seconds before ``now``)."""
    OUT_OF_ORDER_S = 0.5
    """How much earlier than the bookings after it a booking may start (a handler's work starts at its
    event's time, inside another's stretch; decode threads book a little ahead): the scan of the
    history, newest first, stops this far before the window."""

    def __init__(self, name: str, capacity: float = 1.0, anticipate: bool = False) -> None:
        self.name = name
        self.capacity = capacity
        self.anticipate = anticipate
        self._booked: list[tuple[float, float]] = []  # (end, start) of work not yet over (a heap)
        self._history: list[tuple[float, float, float, object]] = []  # (start, end, work, owner), recent
        self._prune_at = 64
        self._owners: set[object] = set()
        self.busy_by: dict[object, float] = {}
        """Profiled work booked per owner (seconds): what each thread or process asks of the device."""

    def run(self, now: float, work_s: float, owner: object = None) -> float:
        """Duration of ``work_s`` seconds of profiled work starting at ``now`` (and book it); ``owner``
        names the thread or process doing it (its own earlier work does not slow it)."""
        if work_s <= 0:
            return 0.0
        booked = self._booked
        while booked and booked[0][0] <= now:
            heapq.heappop(booked)
        until = now + work_s
        overlap = sum(max(0.0, min(end, until) - max(start, now)) for end, start in booked)
        duration = max(work_s, (work_s + overlap) / self.capacity)
        if self.anticipate:
            if owner is None or self._owners - {owner}:  # one owner alone (a GPU per rank) has no one to wait for
                duration = max(duration, work_s * (1.0 + self._demand(now, work_s, owner)) / self.capacity)
            self._owners.add(owner)
            self._history.append((now, now + duration, work_s, owner))
        heapq.heappush(booked, (now + duration, now))
        self.count(owner, work_s)
        return duration

    def count(self, owner: object, work_s: float) -> None:
        """Add ``work_s`` of ``owner``'s work to the device's accounting (``run`` does; work timed without
        it, e.g. a fast-forwarded stretch of decode steps, is counted here)."""
        self.busy_by[owner] = self.busy_by.get(owner, 0.0) + work_s

    @property
    def busy_s(self) -> float:
        """Profiled work booked on the device, every owner's (seconds)."""
        return sum(self.busy_by.values())

    def _demand(self, now: float, work_s: float, owner: object) -> float:
        """Device-seconds per second that owners other than ``owner`` ran in the window before ``now``."""
        window = min(self.ANTICIPATE_WINDOWS * work_s, self.HISTORY_S)
        since = now - window
        history = self._history
        if len(history) > self._prune_at:
            self._history = history = [h for h in history if h[1] >= now - self.HISTORY_S]
            self._prune_at = max(64, 2 * len(history))
        busy = 0.0
        oldest = since - self.OUT_OF_ORDER_S
        for start, end, work, who in reversed(history):
            if start < oldest:
                break
            if (owner is not None and who == owner) or end <= since or start >= now:
                continue
            busy += (min(end, now) - max(start, since)) * work / (end - start)
        return busy / window

    def shared_at(self, now: float) -> bool:
        """Whether other work is running on the device at ``now``."""
        booked = self._booked
        while booked and booked[0][0] <= now:
            heapq.heappop(booked)
        return bool(booked)
