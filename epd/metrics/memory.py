"""Peak memory per rank: each rank reports its own at shutdown, the frontend collects them.

A rank writes one store key, ``epd/peak_memory/<rank>``, holding JSON: on a GPU the peak bytes the
caching allocator handed out (`allocated`) and held (`reserved`); on CPU the process's peak
resident set size (`rss`). The frontend waits a short while for every rank's key after it has
sent the shutdown, and reports whatever arrived (a rank that died reports nothing).
"""

from __future__ import annotations

import json
import logging
import resource
import sys
from datetime import timedelta

import torch

log = logging.getLogger("epd")

KEY = "epd/peak_memory/{rank}"
GIB = 1024**3


def peak_memory(device: torch.device) -> dict:
    """This process's peak memory on `device`, in GiB: {device, allocated_gib, reserved_gib} on a
    GPU, {device, rss_gib} on CPU (the whole process, weights included)."""
    if device.type == "cuda":
        return {
            "device": str(device),
            "allocated_gib": torch.cuda.max_memory_allocated(device) / GIB,
            "reserved_gib": torch.cuda.max_memory_reserved(device) / GIB,
        }
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = rss_kib if sys.platform == "darwin" else rss_kib * 1024  # Linux reports KiB, macOS bytes
    return {"device": str(device), "rss_gib": rss_bytes / GIB}


def reset_peak_memory(device: torch.device) -> None:
    """Start this rank's peak from now (a process that runs several jobs, as a Hydra multirun of
    in-process ranks does, would otherwise report the earlier jobs' peak). CPU's peak RSS cannot be reset."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def report_peak_memory(store, rank: int, device: torch.device) -> None:
    """Publish this rank's peak memory for the frontend (called once, at shutdown)."""
    store.set(KEY.format(rank=rank), json.dumps(peak_memory(device)))


def read_peak_memory(store, ranks, timeout_s: float = 30.0) -> dict[str, dict]:
    """{"<rank>": peak_memory(...)} of every rank of ``ranks`` (or of ``range(ranks)`` for an int) that
    reported within `timeout_s`."""
    ranks = list(range(ranks)) if isinstance(ranks, int) else list(ranks)
    keys = [KEY.format(rank=rank) for rank in ranks]
    try:
        store.wait(keys, timedelta(seconds=timeout_s))
    except Exception as exc:  # a missing rank must not lose the run's results
        log.warning("peak memory: not every rank reported within %.0f s (%s)", timeout_s, exc)
    out = {}
    for rank, key in zip(ranks, keys, strict=True):
        try:
            if store.check([key]):
                out[str(rank)] = json.loads(store.get(key))
        except Exception as exc:
            log.warning("peak memory of rank %d unreadable: %s", rank, exc)
    return out


def max_peak_gib(peaks: dict[str, dict]) -> float | None:
    """The largest peak over ranks: reserved GiB on GPUs, resident GiB on CPU; None if none reported."""
    values = [p.get("reserved_gib", p.get("rss_gib")) for p in peaks.values()]
    values = [v for v in values if v is not None]
    return max(values) if values else None
