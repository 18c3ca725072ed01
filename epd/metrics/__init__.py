"""Metrics: per-request records, the run summary (TTFT/TPOT/ITL/E2E, throughput), the console
table, environment info, and the loggers that write results.json."""

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
from epd.metrics.records import RequestRecord, load_records
from epd.metrics.summary import latency_stats, request_latencies, summarize
from epd.metrics.table import format_table

__all__ = [
    "LOGGERS",
    "LoggerConfig",
    "MetricsLogger",
    "MultiLogger",
    "NullLogger",
    "RequestRecord",
    "build_logger",
    "environment_info",
    "format_table",
    "latency_stats",
    "load_records",
    "request_latencies",
    "summarize",
    "to_jsonable",
]
