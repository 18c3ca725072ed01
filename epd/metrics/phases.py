"""The summary of a whole run: every measured request, plus one summary per load phase.

A run with `workload.phase_rates` plays several loads in one job; its summary keeps the keys of
`summarize` over all measured requests and adds `phases`: for each phase its index, its
`request_rate`, its start (seconds after the first phase started) and `summarize` over its own
requests, whose throughput denominator runs from the phase's start to its last request's end.
"""

from __future__ import annotations

from collections.abc import Sequence

from epd.metrics.records import RequestRecord
from epd.metrics.summary import summarize


def request_end(record: RequestRecord) -> float:
    """When a request ended for the frontend: its last token, else the latest time it recorded."""
    if record.token_times:
        return record.token_times[-1]
    return max([record.arrival, *record.timestamps.values()])


def summarize_run(
    records: Sequence[RequestRecord],
    duration_s: float,
    *,
    phase_starts: Sequence[float] = (),
    phase_rates: Sequence[float] = (),
    slo_ttft_ms: float | None = None,
    slo_tpot_ms: float | None = None,
) -> dict:
    """`summarize` of every measured record, with `phases` when `phase_rates` names more than none.

    `phase_starts[i]` is the wall time phase i started (`ArrivalDriver.phase_starts`).
    """
    slo = {"slo_ttft_ms": slo_ttft_ms, "slo_tpot_ms": slo_tpot_ms}
    summary = summarize(records, duration_s, **slo)
    if not phase_rates:
        return summary
    if len(phase_starts) != len(phase_rates):
        raise ValueError(f"{len(phase_starts)} phase start times for {len(phase_rates)} phase rates")
    phases = []
    for phase, (start, rate) in enumerate(zip(phase_starts, phase_rates, strict=True)):
        own = [record for record in records if record.phase == phase and not record.warmup]
        end = max((request_end(record) for record in own), default=start)
        phases.append(
            {
                "phase": phase,
                "request_rate": rate,
                "start_s": start - phase_starts[0],
                **summarize(own, max(end - start, 1e-9), **slo),
            }
        )
    summary["phases"] = phases
    return summary
