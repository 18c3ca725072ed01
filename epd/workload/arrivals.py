"""Arrival times of requests: Poisson (or gamma, for bursty traffic) offsets from the run start."""

from __future__ import annotations

import math

import numpy as np

from epd.workload.base import WorkloadConfig, WorkloadRequest

# Streams of the seeded generators are told apart by a tag after the seed, so changing e.g. the
# image count never changes the arrival times.
ARRIVAL_STREAM = 0
PROMPT_STREAM = 1
IMAGE_STREAM = 2
VIDEO_STREAM = 3
AUDIO_STREAM = 4
MIX_STREAM = 5  # which modalities each request of the mixed workload carries


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
    Gamma(shape=burstiness, mean=1/rate): exponential (a Poisson process) for burstiness 1.
    An infinite rate sends everything at once (all offsets 0).
    """
    if num_requests <= 0:
        return []
    if math.isinf(request_rate):
        return [0.0] * num_requests
    mean_gap_s = 1.0 / request_rate
    gaps = rng.gamma(shape=burstiness, scale=mean_gap_s / burstiness, size=num_requests - 1)
    return [0.0, *np.cumsum(gaps).tolist()]


def assign_arrivals(requests: list[WorkloadRequest], cfg: WorkloadConfig) -> list[WorkloadRequest]:
    """Set `arrival_s` in place: warmup requests at 0, measured ones from `arrival_times`."""
    measured = [request for request in requests if not request.warmup]
    rng = seeded_rng(cfg.seed, ARRIVAL_STREAM)
    for request, arrival_s in zip(
        measured, arrival_times(len(measured), cfg.request_rate, rng, cfg.burstiness), strict=True
    ):
        request.arrival_s = arrival_s
    for request in requests:
        if request.warmup:
            request.arrival_s = 0.0
    return requests
