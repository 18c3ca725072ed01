"""ArrivalDriver: decides when the frontend sends each request of a workload.

A request is due at its phase's start + `arrival_s`. At most `concurrency` requests are in flight
(0 = no cap): a due request that finds no free slot waits, and its arrival (where its TTFT and
end-to-end latency start) becomes the moment it is sent. A phase starts only once every request
of the previous one has been sent and has ended, so loads played in one job do not overlap.
The driver never sleeps and never reads the clock: the caller passes `now` and the number of
requests in flight, which keeps it a pure, testable policy.
"""

from __future__ import annotations

import math
from collections import deque

from epd.workload.base import WorkloadRequest


class ArrivalDriver:
    """Releases `requests` (all phases) on their schedule; the first phase starts at `start`."""

    def __init__(self, requests: list[WorkloadRequest], start: float, concurrency: int = 0) -> None:
        if concurrency < 0:
            raise ValueError(f"concurrency={concurrency}: set 0 (no cap) or more")
        by_phase: dict[int, list[WorkloadRequest]] = {}
        for request in requests:
            by_phase.setdefault(request.phase, []).append(request)
        self._phases = [sorted(by_phase[p], key=lambda r: r.arrival_s) for p in sorted(by_phase)]
        self.concurrency = concurrency
        self.phase_ids: list[int] = sorted(by_phase)
        """The phase index of each played phase, in play order."""
        self.phase_starts: list[float] = []
        """Wall time each phase started, in play order (filled as phases start)."""
        self._pending: deque[WorkloadRequest] = deque()
        self._num_held = 0  # leading pending requests that were due while every slot was taken
        if self._phases:
            self._start_phase(start)

    @property
    def done(self) -> bool:
        """Every request has been released."""
        return not self._pending and len(self.phase_starts) == len(self._phases)

    def due(self, now: float, in_flight: int) -> list[tuple[WorkloadRequest, float]]:
        """Requests to send at `now`, each with its arrival time, given `in_flight` requests sent and
        not yet ended (the ones returned here count as in flight from now on)."""
        if not self._pending and in_flight == 0 and len(self.phase_starts) < len(self._phases):
            self._start_phase(now)
        start = self.phase_starts[-1] if self.phase_starts else now
        released: list[tuple[WorkloadRequest, float]] = []
        while self._pending and start + self._pending[0].arrival_s <= now:
            if self.concurrency and in_flight + len(released) >= self.concurrency:
                self._hold(start, now)
                break
            request = self._pending.popleft()
            if self._num_held:
                self._num_held -= 1
                released.append((request, now))
            else:
                released.append((request, start + request.arrival_s))
        return released

    def wait_s(self, now: float) -> float:
        """Seconds until the next request is due (0 if one is due already; inf when the next release
        waits on a request ending, not on the clock: the caller then waits for a message)."""
        if not self._pending or self._num_held:
            return math.inf
        return max(0.0, self.phase_starts[-1] + self._pending[0].arrival_s - now)

    def _start_phase(self, now: float) -> None:
        self._pending = deque(self._phases[len(self.phase_starts)])
        self.phase_starts.append(now)
        self._num_held = 0

    def _hold(self, start: float, now: float) -> None:
        """Mark every pending request that is due at `now` as held (they form a prefix of `_pending`)."""
        while self._num_held < len(self._pending) and start + self._pending[self._num_held].arrival_s <= now:
            self._num_held += 1
