"""How many requests each rate of seed_table gets, so that the whole table fits a device-time budget.

The full table (64 requests at 0.1, 0.3 and 0.6 req/s) spends ~640 + 213 + 107 s of arrivals per
configuration: ~16 minutes each, ~50 for the three. A budgeted run keeps the rates (the load each
configuration sees) and cuts the number of requests per rate instead: every rate's arrivals span
about the same time `span_s`, so rate r gets round(r * span_s) requests (at least `min_requests`).
Fewer requests mean noisier means and, at rates a configuration cannot sustain, a shorter queue
than 64 requests would build: an overloaded configuration's TTFT is understated. Every output of
a reduced run says so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

FULL_REQUESTS = 64
RATES = (0.1, 0.3, 0.6)


@dataclass(kw_only=True)
class Plan:
    """Requests per rate and the time the run is expected to take."""

    rates: list[float]
    requests: list[int]
    jobs: int
    reduced: bool
    budget_s: float | None = None
    job_overhead_s: float = 0.0
    drain_s: float = 0.0
    baseline_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def arrival_spans_s(self) -> list[float]:
        """Expected time from a phase's first to its last arrival: (n - 1) / rate."""
        return [(n - 1) / r for n, r in zip(self.requests, self.rates, strict=True)]

    @property
    def job_s(self) -> float:
        """Expected wall time of one configuration's job (start-up, every phase, drains)."""
        return self.job_overhead_s + sum(self.arrival_spans_s) + self.drain_s * len(self.rates)

    @property
    def total_s(self) -> float:
        return self.jobs * self.job_s + self.baseline_s

    def describe(self) -> str:
        counts = "/".join(str(n) for n in self.requests)
        rates = "/".join(f"{r:g}" for r in self.rates)
        head = "REDUCED seed_table" if self.reduced else "seed_table"
        text = (
            f"{head}: {self.jobs} configuration(s) x rates {rates} req/s with {counts} requests"
            f"{f' (the full table has {FULL_REQUESTS} per rate)' if self.reduced else ''}; "
            f"arrivals span {'/'.join(f'{s:.0f}' for s in self.arrival_spans_s)} s; "
            f"estimated {self.total_s:.0f} s" + (f" of a {self.budget_s:.0f} s budget" if self.budget_s else "")
        )
        return "\n".join([text, *self.notes])

    def to_dict(self) -> dict:
        return {**asdict(self), "arrival_spans_s": self.arrival_spans_s, "job_s": self.job_s, "total_s": self.total_s}


def counts_for_span(rates: list[float], span_s: float, min_requests: int, max_requests: int) -> list[int]:
    """round(rate * span_s) requests per rate, clamped to [min_requests, max_requests]."""
    return [max(min_requests, min(max_requests, round(r * span_s))) for r in rates]


def fixed_plan(rates: list[float], requests: int, jobs: int, **estimates: float) -> Plan:
    """The same number of requests at every rate (`requests=64` is the full table)."""
    return Plan(
        rates=list(rates), requests=[requests] * len(rates), jobs=jobs, reduced=requests < FULL_REQUESTS, **estimates
    )


def budget_plan(
    rates: list[float],
    budget_s: float,
    jobs: int,
    *,
    job_overhead_s: float,
    drain_s: float,
    baseline_s: float = 0.0,
    min_requests: int = 3,
    max_requests: int = FULL_REQUESTS,
) -> Plan:
    """The most requests per rate (equal arrival spans) whose estimated total fits `budget_s`."""
    estimates = {"job_overhead_s": job_overhead_s, "drain_s": drain_s, "baseline_s": baseline_s}

    def plan_for(span_s: float) -> Plan:
        counts = counts_for_span(rates, span_s, min_requests, max_requests)
        reduced = any(n < FULL_REQUESTS for n in counts)
        return Plan(rates=list(rates), requests=counts, jobs=jobs, reduced=reduced, budget_s=budget_s, **estimates)

    lo, hi = 0.0, max_requests / min(rates) if all(math.isfinite(r) for r in rates) else 0.0
    if plan_for(lo).total_s > budget_s:
        plan = plan_for(lo)
        plan.notes.append(
            f"warning: even {min_requests} requests per rate are estimated at {plan.total_s:.0f} s, over the "
            f"{budget_s:.0f} s budget: later configurations may be skipped (lower --min-requests or drop a rate)"
        )
        return plan
    for _ in range(60):  # bisect the span; counts are monotone in it
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if plan_for(mid).total_s <= budget_s else (lo, mid)
    return plan_for(lo)
