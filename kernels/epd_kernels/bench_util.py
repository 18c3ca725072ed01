"""Timing helpers and the two hardware ceilings every kernel is compared with (measured in the same run)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def cuda_ms(fn: Callable[[], object], warmup: int = 3, reps: int = 10, sync_each: bool = True) -> float:
    """Median milliseconds of ``fn`` between CUDA events recorded around it.

    ``sync_each``: wait for each call before the next, so host work inside ``fn`` (launches, Python)
    counts as an isolated call pays it; otherwise calls are queued back to back (as
    ``triton.testing.do_bench`` does) and the host's launch cost hides behind the previous call.
    """
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        fn()
        end.record()
        if sync_each:
            end.synchronize()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)


def host_ms(fn: Callable[[], object], warmup: int = 2, reps: int = 10) -> float:
    """Median wall milliseconds of a host-only ``fn``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def copy_bandwidth_gbs(nbytes: int = 2 << 30) -> float:
    """Device-to-device copy rate, bytes read + written per second (GB/s), on random data."""
    src = torch.randn(nbytes // 2, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = cuda_ms(lambda: dst.copy_(src), warmup=3, reps=20)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def matmul_tflops(n: int = 8192) -> float:
    """bf16 matrix product rate on random data (TFLOP/s)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = cuda_ms(lambda: a @ b, warmup=5, reps=20)
    return 2 * n**3 / (ms * 1e-3) / 1e12
