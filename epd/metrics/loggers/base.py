"""The MetricsLogger contract, the do-nothing and fan-out loggers, and JSON-able conversion."""

from __future__ import annotations

import dataclasses
import enum
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import msgspec

from epd.metrics.records import RequestRecord


class MetricsLogger(ABC):
    """Where one run's results go; `build_logger` makes one as `cls(run_dir, **cfg.options)`.

    Contract: `log` may be called any number of times during the run with live scalars;
    `log_run` once at the end with the resolved config, the summary and every record; `close`
    always (use `with` or a `finally`) and more than once is harmless. Only the logging rank
    builds a real logger; the others get a `NullLogger`, so no caller branches on rank.
    """

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """Raise ValueError for options (or a missing dependency) the logger cannot work with; called
        when the config is validated, before any process starts. Accepts anything unless overridden."""
        return

    def log(self, metrics: Mapping[str, float], step: int | None = None) -> None:  # noqa: B027
        """Live scalars at `step` (e.g. seconds into the run); ignored unless overridden."""

    @abstractmethod
    def log_run(self, config: Any, summary: dict, records: Sequence[RequestRecord]) -> None:
        """The run's final results: resolved config (dict or dataclass), summary, records."""

    def close(self) -> None:  # noqa: B027
        """Flush and release whatever the logger holds."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class NullLogger(MetricsLogger):
    """Logs nothing: the logger of every rank that does not log."""

    def __init__(self, run_dir: Path | None = None, **options: Any) -> None:
        pass

    def log_run(self, config: Any, summary: dict, records: Sequence[RequestRecord]) -> None:
        pass


class MultiLogger(MetricsLogger):
    """Sends everything to several loggers, e.g. results.json and W&B."""

    def __init__(self, loggers: Sequence[MetricsLogger]) -> None:
        self.loggers = list(loggers)

    def log(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for logger in self.loggers:
            logger.log(metrics, step)

    def log_run(self, config: Any, summary: dict, records: Sequence[RequestRecord]) -> None:
        for logger in self.loggers:
            logger.log_run(config, summary, records)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def to_jsonable(value: Any) -> Any:
    """`value` as strict-JSON builtins: dataclasses, msgspec structs and mappings become dicts,
    sequences lists, paths and unknown objects strings, and inf/nan null (strict JSON has no such numbers;
    a `request_rate` of null means every request at t=0)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, msgspec.Struct):
        return to_jsonable(msgspec.structs.asdict(value))
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(item) for item in value]
    if hasattr(value, "item"):  # numpy / torch scalars
        return to_jsonable(value.item())
    return str(value)
