"""Metrics: per-request records, the run summary (TTFT/TPOT/ITL/E2E, throughput, goodput, the
per-stage breakdown, load phases), the console table and progress bar, environment info, peak
memory per rank (`epd.metrics.memory`), and the loggers that write results.json (and W&B)."""

from epd.metrics.breakdown import STAGES, request_breakdown
from epd.metrics.environment import environment_info
from epd.metrics.loggers import (
    LOGGERS,
    LoggerConfig,
    MetricsLogger,
    MultiLogger,
    NullLogger,
    build_logger,
    to_jsonable,
)
from epd.metrics.phases import summarize_run
from epd.metrics.progress import ProgressBar
from epd.metrics.records import RequestRecord, load_records
from epd.metrics.summary import latency_stats, request_latencies, summarize
from epd.metrics.table import format_table

__all__ = [
    "LOGGERS",
    "STAGES",
    "LoggerConfig",
    "MetricsLogger",
    "MultiLogger",
    "NullLogger",
    "ProgressBar",
    "RequestRecord",
    "build_logger",
    "environment_info",
    "format_table",
    "latency_stats",
    "load_records",
    "request_breakdown",
    "request_latencies",
    "summarize",
    "summarize_run",
    "to_jsonable",
]
