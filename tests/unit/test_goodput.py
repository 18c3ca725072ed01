"""Goodput and SLO attainment, the per-stage breakdown, phase summaries, the progress bar and peak memory,
all on hand-made timestamps."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from epd.metrics import RequestRecord, format_table, summarize
from epd.metrics.breakdown import STAGES, request_breakdown
from epd.metrics.memory import peak_memory, read_peak_memory, report_peak_memory
from epd.metrics.phases import summarize_run
from epd.metrics.progress import ProgressBar


def rec(rid: str, arrival: float, ttft_s: float, tpot_s: float, num_tokens: int = 5, **kwargs) -> RequestRecord:
    times = [arrival + ttft_s + i * tpot_s for i in range(num_tokens)]
    return RequestRecord(id=rid, arrival=arrival, token_times=times, output_token_ids=list(range(num_tokens)), **kwargs)


@pytest.fixture
def records() -> list[RequestRecord]:
    return [
        rec("fast", 0.0, 0.5, 0.020),  # TTFT 500 ms, TPOT 20 ms: meets both
        rec("slow_first", 1.0, 3.0, 0.020),  # misses TTFT
        rec("slow_decode", 2.0, 0.5, 0.080),  # misses TPOT
        rec("one_token", 3.0, 0.9, 0.0, num_tokens=1),  # no TPOT: meets any TPOT SLO
        rec("failed", 4.0, 0.1, 0.01, error="encoder died"),  # a miss, whatever its timestamps
        rec("warm", 0.0, 9.0, 1.0, warmup=True),  # not counted at all
    ]


@pytest.mark.parametrize(
    ("ttft", "tpot", "good"),
    [(1000.0, 50.0, {"fast", "one_token"}), (1000.0, None, {"fast", "slow_decode", "one_token"}),
     (None, 50.0, {"fast", "slow_first", "one_token"}), (5000.0, 100.0, {"fast", "slow_first", "slow_decode", "one_token"})],
)  # fmt: skip
def test_goodput_and_attainment(records, ttft, tpot, good):
    summary = summarize(records, duration_s=10.0, slo_ttft_ms=ttft, slo_tpot_ms=tpot)
    assert summary["goodput"] == pytest.approx(len(good) / 10.0)
    # attainment: share of the 5 measured requests (the failed one is a miss; warmup is out)
    assert summary["slo_attainment"] == pytest.approx(len(good) / 5)
    assert summary["slo"] == {"ttft_ms": ttft, "tpot_ms": tpot}


def test_no_slo_means_no_goodput(records):
    summary = summarize(records, duration_s=10.0)
    assert summary["goodput"] is None and summary["slo_attainment"] is None


def test_throughputs_count_input_and_output_tokens():
    recs = [
        rec("a", 0.0, 0.1, 0.01, num_tokens=4, num_prompt_tokens=100),
        rec("b", 1.0, 0.1, 0.01, num_prompt_tokens=50),
    ]
    summary = summarize(recs, duration_s=2.0)
    assert summary["input_token_throughput"] == pytest.approx(150 / 2.0)
    assert summary["output_token_throughput"] == pytest.approx(9 / 2.0)
    assert summary["total_token_throughput"] == pytest.approx(159 / 2.0)


def disaggregated(arrival: float = 100.0) -> RequestRecord:
    t = arrival
    stamps = {
        "tokenized": t + 0.010,  # queue 10 ms
        "encode_queue_start": t + 0.011,  # not a milestone (encode_queue runs to fetch_start)
        "fetch_start": t + 0.050,  # encode_queue 40 ms
        "fetch_end": t + 0.080,  # fetch 30 ms
        "encode_start": t + 0.100,  # encode_queue +20 ms (waiting for a batch after decoding)
        "encode_end": t + 0.400,  # encode 300 ms
        "transfer_start": t + 0.401,
        "transfer_end": t + 0.420,  # transfer 20 ms
        "embeddings_ready": t + 0.425,  # transfer +5 ms
        "language_arrival": t + 0.012,  # concurrent with encoding: not on the path
        "prefill_start": t + 0.500,  # prefill_queue 75 ms
        "first_token": t + 0.700,  # prefill 200 ms
    }
    return RequestRecord(
        id="r", arrival=t, timestamps=stamps, token_times=[t + 0.705, t + 0.755, t + 0.805], output_token_ids=[1, 2, 3]
    )


def test_breakdown_stages_are_exact_and_add_up_to_e2e():
    record = disaggregated()
    stages = request_breakdown(record)
    expected = {
        "queue": 10,
        "encode_queue": 60,
        "fetch": 30,
        "encode": 300,
        "transfer": 25,
        "prefill_queue": 75,
        "prefill": 200,
        "decode": 105,
    }
    assert stages == pytest.approx(expected)
    assert list(stages) == [s for s in STAGES if s in expected]  # pipeline order
    assert sum(stages.values()) == pytest.approx((record.token_times[-1] - record.arrival) * 1e3)


def test_breakdown_folds_missing_stages_and_clips_overlaps():
    # colocated text-only: no encoder or transfer stamps; the time lands in the next stage present
    text_only = RequestRecord(
        id="t",
        arrival=0.0,
        timestamps={"tokenized": 0.005, "prefill_start": 0.030, "first_token": 0.130},
        token_times=[0.135, 0.2],
        output_token_ids=[1, 2],
    )
    assert request_breakdown(text_only) == pytest.approx(
        {"queue": 5, "prefill_queue": 25, "prefill": 100, "decode": 70}
    )
    # two items on two encoders: merged stamps overlap (earliest encode_start before latest fetch_end)
    two_items = disaggregated()
    two_items.timestamps["encode_start"] = two_items.arrival + 0.060
    stages = request_breakdown(two_items)
    assert stages["encode_queue"] == pytest.approx(40)  # the overlapping part counts once, in fetch
    assert sum(stages.values()) == pytest.approx(805)
    assert request_breakdown(RequestRecord(id="x", arrival=0.0, error="failed")) == {}


def test_summary_breakdown_means_add_up_to_mean_e2e():
    recs = [disaggregated(0.0), disaggregated(10.0)]
    recs.append(RequestRecord(id="plain", arrival=20.0, token_times=[20.3, 20.4], output_token_ids=[1, 2]))
    summary = summarize(recs, duration_s=30.0)
    means = {stage: stats["mean"] for stage, stats in summary["breakdown_ms"].items()}
    assert means["encode"] == pytest.approx(200.0)  # 300, 300 and 0 for the request without media
    assert sum(means.values()) == pytest.approx(summary["e2e_ms"]["mean"])


def test_phase_summaries_use_their_own_requests_and_duration():
    recs = [rec(f"a{i}", 10.0 + i, 0.5, 0.01, phase=0) for i in range(3)]  # ends at 12.54
    recs += [rec(f"b{i}", 20.0, 2.0 + i, 0.01, phase=1) for i in range(2)]  # ends at 23.04
    summary = summarize_run(
        recs, duration_s=14.0, phase_starts=[10.0, 20.0], phase_rates=[1.0, float("inf")], slo_ttft_ms=1000.0
    )
    assert summary["num_requests"] == 5 and summary["goodput"] == pytest.approx(3 / 14.0)
    first, second = summary["phases"]
    assert (first["phase"], first["request_rate"], first["start_s"]) == (0, 1.0, 0.0)
    assert first["num_requests"] == 3 and first["duration_s"] == pytest.approx(2.54)
    assert first["request_throughput"] == pytest.approx(3 / 2.54) and first["slo_attainment"] == 1.0
    assert second["start_s"] == 10.0 and second["duration_s"] == pytest.approx(3.04)
    assert second["ttft_ms"]["mean"] == pytest.approx(2500.0) and second["slo_attainment"] == 0.0
    assert "phases" not in summarize_run(recs, duration_s=14.0)
    table = format_table({**summary, "peak_memory": {"0": {"device": "cpu", "rss_gib": 1.25}}})
    assert "phase 1     inf req/s: 2/2 ok, TTFT mean 2500.0 ms" in table
    assert "SLO         TTFT <= 1000 ms: 60.0% of requests met it" in table
    assert "peak memory rank 0 1.25 GiB (cpu)" in table


def test_table_shows_time_in_stage():
    table = format_table(summarize([disaggregated()], duration_s=1.0))
    assert "time in stage (ms)" in table
    encode = next(line for line in table.splitlines() if line.strip().startswith("encode "))
    assert encode.split()[1] == "300.00"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_in_logs_prints_every_tenth():
    out = io.StringIO()
    bar = ProgressBar(20, stream=out)
    for i in range(20):
        bar.update(rec(f"r{i}", 0.0, 0.1 * (i + 1), 0.01, error="x" if i == 0 else None))
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and lines[0].startswith("[epd] 2/20 |")
    # TTFT p50 of the 19 successful requests (200..2000 ms): the 10th = 1100 ms
    assert "TTFT p50 1100 ms, 1 failed" in lines[-1] and "20/20" in lines[-1] and "100%" in lines[-1]


def test_progress_bar_on_a_terminal_redraws_and_quiet_prints_nothing():
    term = Terminal()
    bar = ProgressBar(3, stream=term, min_interval_s=0.0)
    for i in range(3):
        bar.update(rec(f"r{i}", 0.0, 0.25, 0.01))
    bar.close()
    text = term.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and "3/3" in text and "TTFT p50 250 ms" in text
    quiet = io.StringIO()
    silent = ProgressBar(3, enabled=False, stream=quiet)
    silent.update(rec("r", 0.0, 0.5, 0.01))
    silent.close()
    assert quiet.getvalue() == "" and silent.done == 1 and silent.ttft_p50_ms == pytest.approx(500.0)


def test_peak_memory_travels_through_the_store():
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, timeout=timedelta(seconds=10))
    mine = peak_memory(torch.device("cpu"))
    assert mine["device"] == "cpu" and 0.01 < mine["rss_gib"] < 1024
    report_peak_memory(store, 1, torch.device("cpu"))
    got = read_peak_memory(store, 2, timeout_s=0.5)  # rank 0 never reports
    assert list(got) == ["1"] and got["1"]["rss_gib"] >= mine["rss_gib"] * 0.5
    assert json.loads(store.get("epd/peak_memory/1")) == got["1"]
