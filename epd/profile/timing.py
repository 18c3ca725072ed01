"""Timing helpers: the typical time of repeated, synchronised runs.

The statistic is the median on a GPU host and the mean on a CPU host (``profile.statistic=auto``):
a shared CPU host's other tenants slow some runs a lot, and the runs of a real job meet those
slowdowns in proportion, which the mean keeps and the median drops.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

_statistic = "median"


def use_statistic(name: str) -> None:
    """``median`` or ``mean``: what ``typical`` and ``typical_time`` keep of repeated timings."""
    global _statistic
    if name not in ("median", "mean"):
        raise ValueError(f"profile.statistic={name!r}: choose auto, median or mean")
    _statistic = name


def typical(times: Iterable[float]) -> float:
    values = list(times)
    return statistics.median(values) if _statistic == "median" else statistics.fmean(values)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """(seconds, result) of one synchronised call."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def typical_time(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """The typical seconds of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    return typical(timed(fn, device)[0] for _ in range(repeats))
