"""Where the frontend's requests come from: a request source.

The frontend asks its source which requests are due (``due``), how long it may wait for the next one
(``wait_s``), and tells it what became of each request it sent (``on_update``: new tokens, the end).
A workload played on its arrival schedule is one source (``WorkloadSource``); the HTTP server is
another. Tokenization, encoder assignment, routing and records stay in the frontend, whatever the
source.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

from epd.metrics import RequestRecord
from epd.workload import ArrivalDriver, WorkloadRequest


class RequestSource(ABC):
    """Requests in, updates out. ``done`` once no request will ever come again."""

    @abstractmethod
    def due(self, now: float, in_flight: int) -> list[tuple[WorkloadRequest, float]]:
        """Requests to submit now, each with its arrival time (where its latencies start)."""

    def wait_s(self, now: float) -> float:
        """Seconds until the next request is due (inf: when a request ends, or never)."""
        return math.inf

    @property
    @abstractmethod
    def done(self) -> bool:
        """No more requests will come."""

    def on_update(self, record: RequestRecord, new_tokens: list[int], finished: bool) -> None:  # noqa: B027
        """A request made progress: ``new_tokens`` arrived, and maybe it ``finished`` (``record`` is final)."""

    def cancelled(self, now: float) -> list[tuple[str, str]]:
        """(request id, error) of requests in flight to abort now (a client left, a deadline passed)."""
        return []

    def unsent(self) -> list[WorkloadRequest]:
        """Requests the source holds that were never submitted (the run was cut short)."""
        return []


class WorkloadSource(RequestSource):
    """A workload's requests on their arrival schedule (``ArrivalDriver``: offsets, phases, concurrency cap)."""

    def __init__(self, requests: list[WorkloadRequest], start: float, concurrency: int = 0) -> None:
        self.requests = requests
        self.driver = ArrivalDriver(requests, start=start, concurrency=concurrency)
        self._sent: set[int] = set()

    def due(self, now: float, in_flight: int) -> list[tuple[WorkloadRequest, float]]:
        out = self.driver.due(now, in_flight)
        self._sent.update(id(req) for req, _ in out)
        return out

    def wait_s(self, now: float) -> float:
        return self.driver.wait_s(now)

    @property
    def done(self) -> bool:
        return self.driver.done

    def unsent(self) -> list[WorkloadRequest]:
        return [req for req in self.requests if id(req) not in self._sent]
