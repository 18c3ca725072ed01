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

from epd.metrics.breakdown import breakdown_samples
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
    (req/s), input_token_throughput, output_token_throughput and total_token_throughput (tok/s), total_input_tokens,
    total_output_tokens, goodput (req/s meeting every SLO given, else None), slo_attainment
    (share of measured requests meeting them; failed ones miss), slo, ttft_ms, tpot_ms, itl_ms,
    e2e_ms ({mean, p50, p90, p99, max} each), stages_ms (per timestamp name, stats of its time
    after arrival, stages in order of their median), breakdown_ms (per stage of
    `epd.metrics.breakdown`, stats of the time spent in it), errors (message -> count),
    encoders and cache_hit_rate (per-encoder utilisation, queue time, batch sizes, cache hits:
    `encoder_stats`).
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
        "input_token_throughput": input_tokens / duration_s,
        "output_token_throughput": output_tokens / duration_s,
        "total_token_throughput": (input_tokens + output_tokens) / duration_s,
        "total_input_tokens": input_tokens,
        "total_output_tokens": output_tokens,
        "goodput": num_good / duration_s if has_slo else None,
        "slo_attainment": num_good / len(measured) if has_slo and measured else None,
        "slo": {"ttft_ms": slo_ttft_ms, "tpot_ms": slo_tpot_ms},
        **{name: latency_stats(samples[name]) for name in LATENCY_METRICS},
        "stages_ms": {stage: latency_stats(stage_ms[stage]) for stage in stage_order},
        "breakdown_ms": {stage: latency_stats(v) for stage, v in breakdown_samples(completed).items()},
        "errors": dict(Counter(r.error for r in measured if r.error is not None).most_common(10)),
        **encoder_stats(measured, duration_s),
    }


def _meets_slo(latencies: dict, slo_ttft_ms: float | None, slo_tpot_ms: float | None) -> bool:
    """Within every given SLO; a request without tokens misses a TTFT SLO, one with a single
    token meets any TPOT SLO (it has no decode steps)."""
    ttft_ms, tpot_ms = latencies["ttft_ms"], latencies["tpot_ms"]
    if slo_ttft_ms is not None and (ttft_ms is None or ttft_ms > slo_ttft_ms):
        return False
    return slo_tpot_ms is None or tpot_ms is None or tpot_ms <= slo_tpot_ms


CACHE_HITS = ("device", "host", "inflight")


def encoder_stats(records: Sequence[RequestRecord], duration_s: float) -> dict:
    """Per encoder rank, from the records' items (their encoders' reports): ``items``, ``tokens``,
    ``busy_s`` (union of its tower calls), ``utilization`` (busy_s / duration_s), ``queue_ms`` and
    ``decode_ms`` stats over items, ``batches`` and ``batch_size`` / ``batch_tokens`` stats over its
    tower calls, ``cache_lookups``, ``cache_hits``, ``cache_hit_rate``; and the run's overall
    ``cache_hit_rate`` (hits from either tier or from an identical item in flight; None: no lookups)."""
    by_rank: dict[int, list[dict]] = defaultdict(list)
    for record in records:
        for item in record.items:
            if "encoder" in item:
                by_rank[item["encoder"]].append(item)
    encoders, lookups, hits = {}, 0, 0
    for rank in sorted(by_rank):
        items = by_rank[rank]
        batches = {it["batch_id"]: it for it in items if it.get("batch_id", -1) >= 0 and it.get("encode_start")}
        busy_s = _union_seconds([(it["encode_start"], it["encode_end"]) for it in batches.values()])
        rank_lookups = sum(1 for it in items if it.get("cache", "off") != "off")
        rank_hits = sum(1 for it in items if it.get("cache") in CACHE_HITS)
        lookups, hits = lookups + rank_lookups, hits + rank_hits
        encoders[str(rank)] = {
            "items": len(items),
            "tokens": sum(it.get("num_tokens", 0) for it in items),
            "busy_s": busy_s,
            "utilization": busy_s / duration_s,
            "queue_ms": latency_stats([it["queue_ms"] for it in items if it.get("queue_ms") is not None]),
            "decode_ms": latency_stats([it["decode_ms"] for it in items if it.get("decode_ms") is not None]),
            "batches": len(batches),
            "batch_size": latency_stats([it["batch_size"] for it in batches.values()]),
            "batch_tokens": latency_stats([it["batch_tokens"] for it in batches.values()]),
            "cache_lookups": rank_lookups,
            "cache_hits": rank_hits,
            "cache_hit_rate": rank_hits / rank_lookups if rank_lookups else None,
        }
    return {"encoders": encoders, "cache_hit_rate": hits / lookups if lookups else None}


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for lo, hi in sorted(intervals):
        if hi > end:
            total += hi - max(lo, end)
            end = hi
    return total
