"""The console table of a run's summary."""

from __future__ import annotations

from epd.metrics.summary import STAT_KEYS

ROWS = (("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("ITL", "itl_ms"), ("E2E", "e2e_ms"))
LABEL_WIDTH = 22
COLUMN_WIDTH = 10


def format_table(summary: dict, stages: bool = True) -> str:
    """A compact table of `summarize`'s output: latency rows x {mean p50 p90 p99 max} in ms,
    then (with `stages`) each stage's time after arrival, then counts and throughputs."""
    lines = [_row("latency (ms)", STAT_KEYS)]
    lines += [_row(label, _numbers(summary[key])) for label, key in ROWS]
    stage_stats = summary.get("stages_ms") or {}
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
