"""Metrics loggers behind a registry: adding one is one new module in this package whose class is
decorated with ``@LOGGERS.register("<name>")`` and takes (run_dir, **options). Modules are imported
on first lookup, so a logger imports its third-party library (e.g. wandb) only when built."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from epd.metrics.loggers.base import MetricsLogger, MultiLogger, NullLogger, to_jsonable
from epd.registry import Registry

LOGGERS: Registry[MetricsLogger] = Registry("metrics logger", "epd.metrics.loggers")


@dataclass(kw_only=True)
class LoggerConfig:
    """Which logger the logging rank writes results with."""

    name: str = "jsonl"
    """Registry key of the logger: "jsonl" (results.json + requests.jsonl in the run dir) or "wandb"
    (the same files, and a Weights & Biases run: offline unless `options.mode` says otherwise)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Logger-specific keyword arguments, e.g. a W&B project; jsonl takes none."""
    quiet: bool = False
    """No progress bar and no summary table on the console (the results files are written as usual)."""

    def __post_init__(self) -> None:
        if self.name not in LOGGERS:
            raise ValueError(f"logger.name={self.name!r}: choose one of {list(LOGGERS)}")
        LOGGERS.get(self.name).check_options(self.options)


def build_logger(cfg: LoggerConfig, run_dir: Path, enabled: bool = True) -> MetricsLogger:
    """The configured logger writing into `run_dir`, or a `NullLogger` when not `enabled` (pass
    `enabled=is_logging_rank` so callers never branch on rank)."""
    if not enabled:
        return NullLogger()
    return LOGGERS.get(cfg.name)(Path(run_dir), **cfg.options)


__all__ = [
    "LOGGERS",
    "LoggerConfig",
    "MetricsLogger",
    "MultiLogger",
    "NullLogger",
    "build_logger",
    "to_jsonable",
]
