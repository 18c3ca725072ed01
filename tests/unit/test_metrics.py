"""Metric definitions on hand-made timestamps, and the console table."""

from __future__ import annotations

import pytest

from epd.metrics import RequestRecord, format_table, latency_stats, summarize


def rec(rid: str, arrival: float, token_times: list[float], **kwargs) -> RequestRecord:
    kwargs.setdefault("output_token_ids", list(range(len(token_times))))
    return RequestRecord(id=rid, arrival=arrival, token_times=token_times, **kwargs)


@pytest.fixture
def records() -> list[RequestRecord]:
    return [
        # TTFT 100 ms, gaps 20 20 ms -> TPOT 20, E2E 140
        rec("a", 10.0, [10.1, 10.12, 10.14], num_prompt_tokens=50, timestamps={"tokenized": 10.01}),
        # TTFT 300 ms, gaps 40 ms -> TPOT 40, E2E 340
        rec("b", 20.0, [20.3, 20.34], num_prompt_tokens=30, timestamps={"tokenized": 20.03}),
        # one token: TTFT 50 ms, no TPOT, no gaps, E2E 50
        rec("c", 30.0, [30.05], num_prompt_tokens=20),
        rec("failed", 40.0, [40.001], error="encoder died", num_prompt_tokens=99),
        rec("warm", 0.0, [5.0, 9.0], warmup=True, num_prompt_tokens=99),
    ]


def test_latency_definitions_exact(records):
    summary = summarize(records, duration_s=4.0)
    assert summary["ttft_ms"]["mean"] == pytest.approx(150.0)
    assert summary["ttft_ms"]["max"] == pytest.approx(300.0)
    assert summary["ttft_ms"]["p50"] == pytest.approx(100.0)
    # TPOT: per request (20, 40), averaged over requests
    assert summary["tpot_ms"]["mean"] == pytest.approx(30.0)
    # ITL: all gaps pooled (20, 20, 40): the mean differs from TPOT's
    assert summary["itl_ms"]["mean"] == pytest.approx(80 / 3)
    assert summary["itl_ms"]["p50"] == pytest.approx(20.0)
    assert summary["e2e_ms"]["mean"] == pytest.approx((140 + 340 + 50) / 3)
    assert summary["e2e_ms"]["max"] == pytest.approx(340.0)


def test_percentiles_interpolate_linearly():
    stats = latency_stats([float(v) for v in range(1, 101)])  # 1..100
    assert stats == pytest.approx({"mean": 50.5, "p50": 50.5, "p90": 90.1, "p99": 99.01, "max": 100.0})
    assert latency_stats([]) == {"mean": None, "p50": None, "p90": None, "p99": None, "max": None}


def test_failed_and_warmup_excluded_from_latency_but_counted(records):
    summary = summarize(records, duration_s=4.0)
    assert (summary["num_requests"], summary["num_completed"], summary["num_failed"], summary["num_warmup"]) == (
        4,
        3,
        1,
        1,
    )
    assert summary["ttft_ms"]["max"] == pytest.approx(300.0)  # not warm's 5000
    assert summary["errors"] == {"encoder died": 1}
    assert summary["request_throughput"] == pytest.approx(3 / 4.0)
    assert summary["total_output_tokens"] == 6 and summary["total_input_tokens"] == 100
    assert summary["output_token_throughput"] == pytest.approx(6 / 4.0)
    assert summary["total_token_throughput"] == pytest.approx(106 / 4.0)
    assert summary["duration_s"] == 4.0


def test_tpot_counts_output_tokens_not_token_messages():
    # 5 tokens reaching the frontend in two messages (times repeat): TPOT spreads the decode
    # time over 4 steps; ITL sees the gaps as they arrived (0, 0, 400, 0 ms)
    record = rec("chunked", 0.0, [1.0, 1.0, 1.0, 1.4, 1.4])
    summary = summarize([record], duration_s=2.0)
    assert summary["tpot_ms"]["mean"] == pytest.approx(100.0)
    assert summary["itl_ms"]["p50"] == pytest.approx(0.0) and summary["itl_ms"]["max"] == pytest.approx(400.0)
    assert summary["ttft_ms"]["mean"] == pytest.approx(1000.0)
    assert summary["e2e_ms"]["mean"] == pytest.approx(1400.0)
    # one time per message, ids for every token: still 4 decode steps
    sparse = rec("sparse", 0.0, [1.0, 1.4], output_token_ids=[1, 2, 3, 4, 5])
    assert summarize([sparse], duration_s=2.0)["tpot_ms"]["mean"] == pytest.approx(100.0)


def test_stages_and_goodput(records):
    summary = summarize(records, duration_s=2.0, slo_ttft_ms=200.0, slo_tpot_ms=25.0)
    assert list(summary["stages_ms"]) == ["tokenized"]
    assert summary["stages_ms"]["tokenized"]["mean"] == pytest.approx(20.0)
    assert summary["goodput"] == pytest.approx(2 / 2.0)  # a and c meet both; b misses TTFT
    assert summarize(records, duration_s=2.0)["goodput"] is None


def test_empty_run_and_bad_duration():
    summary = summarize([], duration_s=1.0)
    assert summary["num_requests"] == 0 and summary["ttft_ms"]["mean"] is None
    assert "TTFT" in format_table(summary)
    with pytest.raises(ValueError, match="duration_s=0"):
        summarize([], duration_s=0)


def test_format_table(records):
    table = format_table(summarize(records, duration_s=4.0))
    lines = table.splitlines()
    assert lines[0].split() == ["latency", "(ms)", "mean", "p50", "p90", "p99", "max"]
    assert lines[1].split()[:3] == ["TTFT", "150.00", "100.00"]
    assert [line.split()[0] for line in lines[1:5]] == ["TTFT", "TPOT", "ITL", "E2E"]
    assert "4 measured, 3 ok, 1 failed, 1 warmup" in table
    assert "0.750 req/s" in table and "encoder died" in table
    assert "tokenized" in table
