"""When requests arrive: Poisson, gamma (bursty), fixed concurrency, or the replay of a trace.

Each measured request gets `arrival_s`, its offset from the start of its phase. Open-loop
processes (poisson, gamma, trace) fix every offset up front; "concurrency" is a closed loop, so
its offsets are all 0 and the driver (`epd.workload.driver`) holds each request until one of the
`concurrency` slots is free. With `phase_rates`, the measured requests are split into phases, one
per rate, each timed from its own start.
"""

from __future__ import annotations

import math

import numpy as np

from epd.workload.base import WorkloadConfig, WorkloadRequest

ARRIVALS = ("poisson", "gamma", "concurrency", "trace")

# Streams of the seeded generators are told apart by a tag after the seed, so changing e.g. the
# image count never changes the arrival times.
ARRIVAL_STREAM = 0
PROMPT_STREAM = 1
IMAGE_STREAM = 2
VIDEO_STREAM = 3
AUDIO_STREAM = 4
MIX_STREAM = 5  # which modalities each request of the mixed workload carries
COUNT_STREAM = 6  # how many items a request carries, with random_count


def seeded_rng(seed: int, *keys: int) -> np.random.Generator:
    """An independent generator for (seed, *keys): same keys, same stream."""
    return np.random.default_rng([seed, *keys])


def arrival_times(
    num_requests: int,
    request_rate: float,
    rng: np.random.Generator,
    burstiness: float = 1.0,
) -> list[float]:
    """Offsets in seconds of `num_requests` arrivals at mean rate `request_rate` (requests/s).

    The first request arrives at 0 and the gaps between consecutive ones are i.i.d.
    Gamma(shape=burstiness, mean=1/rate): exponential (a Poisson process) for burstiness 1; the
    gaps' coefficient of variation is 1/sqrt(burstiness). An infinite rate sends everything at
    once (all offsets 0).
    """
    if num_requests <= 0:
        return []
    if math.isinf(request_rate):
        return [0.0] * num_requests
    mean_gap_s = 1.0 / request_rate
    gaps = rng.gamma(shape=burstiness, scale=mean_gap_s / burstiness, size=num_requests - 1)
    return [0.0, *np.cumsum(gaps).tolist()]


def measured_offsets(cfg: WorkloadConfig, num_requests: int) -> tuple[list[float], list[int]]:
    """(offset from its phase's start, phase) of each of `num_requests` measured requests, in order."""
    if cfg.arrival == "concurrency":
        return [0.0] * num_requests, [0] * num_requests
    if cfg.arrival == "trace":
        from epd.workload.trace import trace_offsets

        return trace_offsets(cfg.trace_path, num_requests, cfg.trace_speed), [0] * num_requests
    burstiness = cfg.burstiness if cfg.arrival == "gamma" else 1.0
    if not cfg.phase_rates:
        rng = seeded_rng(cfg.seed, ARRIVAL_STREAM)
        return arrival_times(num_requests, cfg.request_rate, rng, burstiness), [0] * num_requests
    counts = cfg.requests_per_phase
    if sum(counts) != num_requests:
        raise ValueError(f"{num_requests} measured requests for phases of {counts} requests")
    offsets: list[float] = []
    phases: list[int] = []
    for phase, (rate, count) in enumerate(zip(cfg.phase_rates, counts, strict=True)):
        offsets += arrival_times(count, rate, seeded_rng(cfg.seed, ARRIVAL_STREAM, phase), burstiness)
        phases += [phase] * count
    return offsets, phases


def assign_arrivals(requests: list[WorkloadRequest], cfg: WorkloadConfig) -> list[WorkloadRequest]:
    """Set `arrival_s` and `phase` in place: warmup requests at 0 (phase 0), measured ones from
    `cfg.arrival` (and `cfg.phase_rates`)."""
    measured = [request for request in requests if not request.warmup]
    offsets, phases = measured_offsets(cfg, len(measured))
    for request, arrival_s, phase in zip(measured, offsets, phases, strict=True):
        request.arrival_s = arrival_s
        request.phase = phase
    for request in requests:
        if request.warmup:
            request.arrival_s = 0.0
            request.phase = 0
    return requests
