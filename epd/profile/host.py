"""How many cores this host really gives epd: the same CPU-bound work, alone and in parallel.

On a shared machine other tenants hold cores, so ``os.cpu_count()`` overstates what the ranks,
decode threads and frontend of a CPU run share. ``effective_cores`` runs a fixed piece of
single-threaded torch work in one process, then in ``cpu_count`` processes at once:
``effective = n * t_alone / t_parallel`` (``cpu_count`` on an idle machine, less when it is shared).
The simulator shares a CPU profile's host among its workers by this figure.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time

import torch

WORK_ITERS = 300


def _work(_: int = 0) -> float:
    torch.set_num_threads(1)
    a = torch.randn(192, 192)
    start = time.perf_counter()
    for _ in range(WORK_ITERS):
        a = torch.tanh(a @ a * 1e-2)
    return time.perf_counter() - start


def effective_cores(repeats: int = 3) -> dict:
    """``{"cpu_count", "effective_cores", "alone_s", "parallel_s"}`` of this host, now."""
    n = os.cpu_count() or 1
    ctx = mp.get_context("spawn")
    with ctx.Pool(n) as pool:
        pool.map(_work, range(n))  # warm the workers
        alone = statistics.median(pool.apply(_work) for _ in range(repeats))
        parallel = statistics.median(statistics.mean(pool.map(_work, range(n))) for _ in range(repeats))
    return {"cpu_count": n, "effective_cores": min(float(n), n * alone / parallel), "alone_s": alone,
            "parallel_s": parallel}  # fmt: skip
