"""Arrival processes: Poisson, gamma, fixed concurrency, trace replay, phases; the driver's schedule; and
the per-request random item count of synthetic workloads (seeded like the arrivals)."""

from __future__ import annotations

import heapq
import json
import math

import numpy as np
import pytest

from epd.workload import ArrivalDriver, WorkloadConfig, WorkloadRequest, build_workload
from epd.workload.arrivals import measured_offsets
from epd.workload.trace import TraceError, trace_offsets


def gaps_of(cfg: WorkloadConfig, n: int) -> np.ndarray:
    offsets, _ = measured_offsets(cfg, n)
    return np.diff(offsets)


def dispersion_of_counts(offsets: list[float], window_s: float) -> float:
    """Variance / mean of the number of arrivals per window (1 for Poisson, CV^2 for a renewal process)."""
    counts = np.bincount((np.asarray(offsets) // window_s).astype(int))[:-1]  # drop the partial last window
    return float(counts.var() / counts.mean())


def test_poisson_gaps_are_exponential_and_counts_poisson():
    rate = 5.0
    offsets, phases = measured_offsets(WorkloadConfig(request_rate=rate, num_requests=40000, seed=7), 40000)
    gaps = np.diff(offsets)
    assert offsets[0] == 0.0 and np.all(gaps >= 0) and set(phases) == {0}
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.02)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.03)
    # memorylessness: P(gap > t) = exp(-rate t) at several t
    for t in (0.1, 0.2, 0.5):
        assert np.mean(gaps > t) == pytest.approx(math.exp(-rate * t), abs=0.01)
    # counts in 2 s windows: mean 10, variance equal to the mean
    assert dispersion_of_counts(offsets, 2.0) == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("burstiness", [0.25, 4.0])
def test_gamma_burstiness_sets_the_spread_not_the_rate(burstiness):
    rate = 2.0
    cfg = WorkloadConfig(arrival="gamma", burstiness=burstiness, request_rate=rate, num_requests=40000, seed=3)
    offsets, _ = measured_offsets(cfg, 40000)
    gaps = np.diff(offsets)
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1 / math.sqrt(burstiness), rel=0.05)
    # bursty traffic is over-dispersed in time windows, regular traffic under-dispersed (index -> CV^2)
    assert dispersion_of_counts(offsets, 25.0) == pytest.approx(1 / burstiness, rel=0.25)


def test_seed_fixes_arrivals_and_media_settings_do_not_move_them(tmp_path):
    base = {"num_requests": 6, "request_rate": 3.0, "image_count": 0, "seed": 11}
    first = [r.arrival_s for r in build_workload(WorkloadConfig(**base), tmp_path)]
    assert first == [r.arrival_s for r in build_workload(WorkloadConfig(**base), tmp_path)]
    assert first == [r.arrival_s for r in build_workload(WorkloadConfig(**base, input_len=5), tmp_path)]
    assert first != [r.arrival_s for r in build_workload(WorkloadConfig(**{**base, "seed": 12}), tmp_path)]


def test_warmup_requests_arrive_at_zero_outside_the_measured_schedule(tmp_path):
    cfg = WorkloadConfig(num_requests=4, warmup_requests=2, request_rate=1.0, image_count=0, seed=1)
    requests = build_workload(cfg, tmp_path)
    assert [(r.warmup, r.arrival_s) for r in requests[:2]] == [(True, 0.0), (True, 0.0)]
    measured = [r.arrival_s for r in requests if not r.warmup]
    assert measured == measured_offsets(cfg, 4)[0]  # warmups do not shift the measured arrivals


def test_phases_split_requests_and_restart_the_clock(tmp_path):
    cfg = WorkloadConfig(
        phase_rates=[1.0, 10.0, math.inf], phase_requests=[3, 4, 2], image_count=0, seed=2, warmup_requests=1
    )
    requests = [r for r in build_workload(cfg, tmp_path) if not r.warmup]
    assert len(requests) == cfg.total_requests == 9
    assert [r.phase for r in requests] == [0] * 3 + [1] * 4 + [2] * 2
    for phase in range(3):
        offsets = [r.arrival_s for r in requests if r.phase == phase]
        assert offsets[0] == 0.0 and offsets == sorted(offsets)
    assert [r.arrival_s for r in requests if r.phase == 2] == [0.0, 0.0]
    assert len({r.id for r in requests}) == 9  # distinct requests (and media) in every phase


def test_trace_replay_plain_csv_jsonl(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("# seconds\n100.5\n100.0\n\n103.0\n101.0\n")
    assert trace_offsets(plain, 3) == [0.0, 0.5, 1.0]  # earliest 3, sorted, shifted to 0
    assert trace_offsets(plain, 4, speed=2.0) == [0.0, 0.25, 0.5, 1.5]
    azure_like = tmp_path / "azure.csv"
    azure_like.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.500000,374,44\n2023-11-16 18:15:46.000000,396,109\n2023-11-16 18:15:48.250000,879,20\n"
    )
    assert trace_offsets(azure_like, 3) == pytest.approx([0.0, 0.5, 2.25])
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("\n".join(json.dumps({"arrival_s": t, "id": i}) for i, t in enumerate([0.0, 2.0, 1.0])))
    assert trace_offsets(jsonl, 3) == [0.0, 1.0, 2.0]

    cfg = WorkloadConfig(arrival="trace", trace_path=str(plain), num_requests=3, image_count=0)
    assert [r.arrival_s for r in build_workload(cfg, tmp_path / "media")] == [0.0, 0.5, 1.0]


def test_trace_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("1.0\nsoon\n")
    with pytest.raises(TraceError, match=r"bad.txt:2: expected a number"):
        trace_offsets(bad, 2)
    short = tmp_path / "short.txt"
    short.write_text("1\n2\n")
    with pytest.raises(TraceError, match="has 2 arrival times but the run measures 3"):
        trace_offsets(short, 3)
    no_col = tmp_path / "nocol.csv"
    no_col.write_text("when,tokens\n1,2\n")
    with pytest.raises(TraceError, match="header with one of the columns"):
        trace_offsets(no_col, 1)


def requests_at(offsets: list[float], phase: int = 0) -> list[WorkloadRequest]:
    return [
        WorkloadRequest(id=f"p{phase}-{i}", messages=[], max_tokens=1, arrival_s=t, phase=phase)
        for i, t in enumerate(offsets)
    ]


def simulate(driver: ArrivalDriver, service_s: float, start: float = 0.0) -> list[dict]:
    """Play `driver` against a server that finishes each request `service_s` after it was sent.

    Returns one event per request: {id, phase, arrival, sent, in_flight (after sending it)}."""
    now, ends, events = start, [], []
    while not driver.done or ends:
        while ends and ends[0] <= now:
            heapq.heappop(ends)
        for request, arrival in driver.due(now, len(ends)):
            heapq.heappush(ends, now + service_s)
            events.append({"id": request.id, "phase": request.phase, "arrival": arrival, "sent": now, "in": len(ends)})
        next_due = now + driver.wait_s(now)
        now = min(next_due, ends[0] if ends else math.inf)
        if math.isinf(now):
            break
    return events


def test_fixed_concurrency_keeps_exactly_n_in_flight():
    cfg = WorkloadConfig(arrival="concurrency", concurrency=3, num_requests=10, image_count=0)
    offsets, _ = measured_offsets(cfg, 10)
    assert offsets == [0.0] * 10
    events = simulate(ArrivalDriver(requests_at(offsets), start=0.0, concurrency=3), service_s=1.0)
    assert len(events) == 10 and max(e["in"] for e in events) == 3
    # three at t=0, then one each time one ends: sent at 0,0,0,1,1,1,2,2,2,3
    assert [e["sent"] for e in events] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    # a closed-loop request's latency starts when it is sent, not at t=0
    assert all(e["arrival"] == e["sent"] for e in events)


def test_concurrency_cap_on_open_loop_arrivals():
    driver = ArrivalDriver(requests_at([0.0, 0.1, 0.2, 5.0]), start=100.0, concurrency=1)
    events = simulate(driver, service_s=1.0, start=100.0)
    assert [e["sent"] for e in events] == pytest.approx([100.0, 101.0, 102.0, 105.0])
    # on time: arrival is the schedule; held for a slot: arrival is when it was sent
    assert [e["arrival"] for e in events] == pytest.approx([100.0, 101.0, 102.0, 105.0])
    uncapped = simulate(ArrivalDriver(requests_at([0.0, 0.1, 0.2]), start=0.0), service_s=1.0)
    assert [e["arrival"] for e in uncapped] == pytest.approx([0.0, 0.1, 0.2])
    assert max(e["in"] for e in uncapped) == 3


def test_next_phase_waits_for_the_previous_to_drain():
    requests = requests_at([0.0, 0.5], phase=0) + requests_at([0.0, 0.25], phase=1)
    driver = ArrivalDriver(requests, start=10.0)
    events = simulate(driver, service_s=2.0, start=10.0)
    # phase 0 sends at 10 and 10.5; its last request ends at 12.5, so phase 1 starts then
    assert driver.phase_starts == pytest.approx([10.0, 12.5])
    assert [e["phase"] for e in events] == [0, 0, 1, 1]
    assert [e["sent"] for e in events] == pytest.approx([10.0, 10.5, 12.5, 12.75])
    assert driver.done and driver.wait_s(20.0) == math.inf


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"arrival": "uniform"}, "workload.arrival='uniform'"),
        ({"burstiness": 0.5}, "add workload.arrival=gamma"),
        ({"arrival": "concurrency"}, "workload.concurrency=0"),
        ({"arrival": "concurrency", "concurrency": 2, "request_rate": 1.0}, "is not used by workload.arrival"),
        ({"concurrency": -1}, "workload.concurrency=-1"),
        ({"arrival": "trace"}, "needs workload.trace_path"),
        ({"arrival": "trace", "trace_path": "/no/such/trace.txt"}, "no such file"),
        ({"trace_speed": 0.0}, "workload.trace_speed=0.0"),
        ({"phase_rates": [1.0, 0.0]}, "every rate must be > 0"),
        ({"phase_rates": [1.0, 2.0], "phase_requests": [3]}, "one count per rate"),
        ({"phase_requests": [3]}, "needs workload.phase_rates"),
        ({"phase_rates": [1.0], "arrival": "concurrency", "concurrency": 2}, "does not use"),
        ({"slo_ttft_ms": 0.0}, "workload.slo_ttft_ms=0.0"),
    ],
)
def test_arrival_config_errors_say_what_to_change(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.").replace("[", r"\[")):
        WorkloadConfig(**overrides)


def test_random_item_count_is_uniform_and_seeded(tmp_path):
    def counts(**kw):
        cfg = WorkloadConfig(num_requests=400, image_count=4, resolution="16x16", input_len=1, **kw)
        return [sum(p["type"] == "image_url" for p in r.messages[0]["content"]) for r in build_workload(cfg, tmp_path)]

    drawn = counts(random_count=True, seed=1)
    assert set(drawn) == {1, 2, 3, 4} and all(60 < drawn.count(n) < 140 for n in range(1, 5))
    assert drawn == counts(random_count=True, seed=1) and drawn != counts(random_count=True, seed=2)
    assert set(counts()) == {4}
