"""A run's summary from its per-request records: latency statistics, throughput, goodput.

Definitions (over successful, non-warmup requests; times from `RequestRecord`):
    TTFT  = first token time - arrival
    TPOT  = (last token time - first token time) / (num_output_tokens - 1), per request with
            more than one output token, then averaged (or ranked) over requests
    ITL   = every gap between consecutive token times, pooled over requests
    E2E   = last token time - arrival
Failed requests count in `num_requests` and `num_failed`; warmup ones only in `num_warmup`.
Percentiles interpolate linearly (numpy's default). Latencies are in milliseconds.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from epd.metrics.records import RequestRecord

PERCENTILES = (50, 90, 99)
STAT_KEYS = ("mean", *(f"p{p}" for p in PERCENTILES), "max")
LATENCY_METRICS = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")


def latency_stats(values_ms: Sequence[float]) -> dict[str, float | None]:
    """{mean, p50, p90, p99, max} of `values_ms`; all None when there are none."""
    if len(values_ms) == 0:
        return dict.fromkeys(STAT_KEYS)
    values = np.asarray(values_ms, dtype=np.float64)
    stats = {"mean": float(values.mean())}
    stats |= {f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES}
    stats["max"] = float(values.max())
    return stats


def request_latencies(record: RequestRecord) -> dict[str, float | list[float] | None]:
    """One request's TTFT, TPOT, E2E (ms, None when undefined) and ITL gaps (ms)."""
    times = record.token_times
    if not times:
        return {"ttft_ms": None, "tpot_ms": None, "e2e_ms": None, "itl_ms": []}
    num_out = record.num_output_tokens
    decode_ms = (times[-1] - times[0]) * 1e3
    return {
        "ttft_ms": (times[0] - record.arrival) * 1e3,
        "tpot_ms": decode_ms / (num_out - 1) if num_out > 1 else None,
        "e2e_ms": (times[-1] - record.arrival) * 1e3,
        "itl_ms": (np.diff(times) * 1e3).tolist(),
    }


def summarize(
    records: Sequence[RequestRecord],
    duration_s: float,
    *,
    slo_ttft_ms: float | None = None,
    slo_tpot_ms: float | None = None,
) -> dict:
    """Summary of a run that lasted `duration_s` seconds (the throughput denominator).

    Keys: num_requests, num_completed, num_failed, num_warmup, duration_s, request_throughput
    (req/s), output_token_throughput and total_token_throughput (tok/s), total_input_tokens,
    total_output_tokens, goodput (req/s meeting every SLO given, else None), slo, ttft_ms,
    tpot_ms, itl_ms, e2e_ms ({mean, p50, p90, p99, max} each), stages_ms (per timestamp name,
    stats of its time after arrival, stages in order of their median), errors (message -> count).
    """
    if not duration_s > 0:
        raise ValueError(f"duration_s={duration_s}: a run's duration must be > 0 seconds")
    measured = [record for record in records if not record.warmup]
    completed = [record for record in measured if record.error is None]
    samples: dict[str, list[float]] = {name: [] for name in LATENCY_METRICS}
    stage_ms: dict[str, list[float]] = defaultdict(list)
    num_good = 0
    for record in completed:
        latencies = request_latencies(record)
        samples["itl_ms"] += latencies.pop("itl_ms")
        for name, value in latencies.items():
            if value is not None:
                samples[name].append(value)
        for stage, time_s in record.timestamps.items():
            stage_ms[stage].append((time_s - record.arrival) * 1e3)
        num_good += _meets_slo(latencies, slo_ttft_ms, slo_tpot_ms)
    input_tokens = sum(record.num_prompt_tokens for record in completed)
    output_tokens = sum(record.num_output_tokens for record in completed)
    stage_order = sorted(stage_ms, key=lambda stage: float(np.median(stage_ms[stage])))
    has_slo = slo_ttft_ms is not None or slo_tpot_ms is not None
    return {
        "num_requests": len(measured),
        "num_completed": len(completed),
        "num_failed": len(measured) - len(completed),
        "num_warmup": len(records) - len(measured),
        "duration_s": duration_s,
        "request_throughput": len(completed) / duration_s,
        "output_token_throughput": output_tokens / duration_s,
        "total_token_throughput": (input_tokens + output_tokens) / duration_s,
        "total_input_tokens": input_tokens,
        "total_output_tokens": output_tokens,
        "goodput": num_good / duration_s if has_slo else None,
        "slo": {"ttft_ms": slo_ttft_ms, "tpot_ms": slo_tpot_ms},
        **{name: latency_stats(samples[name]) for name in LATENCY_METRICS},
        "stages_ms": {stage: latency_stats(stage_ms[stage]) for stage in stage_order},
        "errors": dict(Counter(r.error for r in measured if r.error is not None).most_common(10)),
    }


def _meets_slo(latencies: dict, slo_ttft_ms: float | None, slo_tpot_ms: float | None) -> bool:
    """Within every given SLO; a request without tokens misses a TTFT SLO, one with a single
    token meets any TPOT SLO (it has no decode steps)."""
    ttft_ms, tpot_ms = latencies["ttft_ms"], latencies["tpot_ms"]
    if slo_ttft_ms is not None and (ttft_ms is None or ttft_ms > slo_ttft_ms):
        return False
    return slo_tpot_ms is None or tpot_ms is None or tpot_ms <= slo_tpot_ms
