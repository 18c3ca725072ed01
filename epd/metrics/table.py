"""The console table of a run's summary."""

from __future__ import annotations

from epd.metrics.summary import STAT_KEYS

ROWS = (("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("ITL", "itl_ms"), ("E2E", "e2e_ms"))
LABEL_WIDTH = 22
COLUMN_WIDTH = 10


def format_table(summary: dict, stages: bool = True) -> str:
    """A compact table of `summarize`'s output: latency rows x {mean p50 p90 p99 max} in ms,
    then (with `stages`) the time spent in each stage (`breakdown_ms`) and when each timestamp was
    reached (`stages_ms`), then counts, throughputs, SLOs, peak memory and one line per phase."""
    lines = [_row("latency (ms)", STAT_KEYS)]
    lines += [_row(label, _numbers(summary[key])) for label, key in ROWS]
    breakdown = summary.get("breakdown_ms") or {}
    stage_stats = summary.get("stages_ms") or {}
    if stages and breakdown:
        lines.append(_row("time in stage (ms)", ()))
        lines += [_row(f"  {stage}", _numbers(stats)) for stage, stats in breakdown.items()]
    if stages and stage_stats:
        lines.append(_row("stage (ms after arrival)", ()))
        lines += [_row(f"  {stage}", _numbers(stats)) for stage, stats in stage_stats.items()]
    lines.append(
        f"requests    {summary['num_requests']} measured, {summary['num_completed']} ok, "
        f"{summary['num_failed']} failed, {summary['num_warmup']} warmup, "
        f"{summary['duration_s']:.2f} s"
    )
    throughput = (
        f"throughput  {summary['request_throughput']:.3f} req/s, "
        f"{summary['output_token_throughput']:.1f} output tok/s, "
        f"{summary['total_token_throughput']:.1f} total tok/s"
    )
    if summary.get("goodput") is not None:
        throughput += f", goodput {summary['goodput']:.3f} req/s"
    lines.append(throughput)
    lines += _extra_lines(summary)
    for message, count in (summary.get("errors") or {}).items():
        lines.append(f"error x{count}: {message}")
    return "\n".join(lines)


def _numbers(stats: dict) -> list[str]:
    return ["-" if stats.get(key) is None else f"{stats[key]:.2f}" for key in STAT_KEYS]


def _row(label: str, cells: tuple[str, ...] | list[str]) -> str:
    if not cells:  # a section heading
        return label
    label = label if len(label) < LABEL_WIDTH else label[: LABEL_WIDTH - 2] + "~"
    return f"{label:<{LABEL_WIDTH}}" + "".join(f"{cell:>{COLUMN_WIDTH}}" for cell in cells)


def _extra_lines(summary: dict) -> list[str]:
    """SLO attainment, peak memory per rank and a line per load phase, when the summary has them."""
    lines = []
    slo = summary.get("slo") or {}
    if summary.get("slo_attainment") is not None:
        targets = ", ".join(f"{key.removesuffix('_ms').upper()} <= {value:g} ms" for key, value in slo.items() if value)
        lines.append(f"SLO         {targets}: {100 * summary['slo_attainment']:.1f}% of requests met it")
    peaks = summary.get("peak_memory") or {}
    if peaks:
        cells = [
            f"rank {rank} {p.get('reserved_gib', p.get('rss_gib', 0.0)):.2f} GiB ({p.get('device', '?')})"
            for rank, p in peaks.items()
        ]
        lines.append("peak memory " + ", ".join(cells))
    for phase in summary.get("phases") or []:
        ttft, tpot = phase["ttft_ms"], phase["tpot_ms"]
        lines.append(
            f"phase {phase['phase']}     {phase['request_rate']:g} req/s: {phase['num_completed']}/{phase['num_requests']} ok"
            f", TTFT mean {_ms(ttft['mean'])} p99 {_ms(ttft['p99'])}, TPOT mean {_ms(tpot['mean'])}"
            f", {phase['request_throughput']:.3f} req/s"
        )
    return lines


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"
