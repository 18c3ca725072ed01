"""Arrival traces: a file of timestamps, replayed as request arrivals (`workload.arrival=trace`).

Accepted forms, one arrival a line (blank lines and lines starting with # are skipped):

    12.5                                   plain numbers, in seconds
    timestamp,context_tokens,...           a CSV whose header names a time column (any case):
    2023-11-16 18:15:46.680,374,...        timestamp, arrival_s or time; numbers or ISO-8601 times
    {"timestamp": 12.5, ...}               JSONL objects with one of those keys

The times need not be sorted or start at 0: the earliest `num_requests` are kept, in time order,
and shifted so the first is 0.
"""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

TIME_KEYS = ("timestamp", "arrival_s", "time")


class TraceError(ValueError):
    """A trace file that cannot be read; the message names the file, the line and the problem."""


def read_trace(path: str | Path) -> list[float]:
    """Every arrival time in the file, in seconds (on the file's own clock), in file order."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TraceError(f"workload.trace_path={str(path)!r}: no such file")
    lines = [
        (lineno, line.strip())
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise TraceError(f"{path}: no arrival times in the file")
    first = lines[0][1]
    if first.startswith("{"):
        return [_jsonl_time(path, lineno, line) for lineno, line in lines]
    if _number(first) is not None:
        return [_plain_time(path, lineno, line) for lineno, line in lines]
    return _csv_times(path, lines)


def trace_offsets(path: str | Path, num_requests: int, speed: float = 1.0) -> list[float]:
    """Offsets in seconds of the earliest `num_requests` arrivals of the trace, from the first one,
    divided by `speed` (2 = replay twice as fast)."""
    times = sorted(read_trace(path))
    if len(times) < num_requests:
        raise TraceError(
            f"workload.trace_path={str(path)!r} has {len(times)} arrival times but the run measures "
            f"{num_requests} requests: lower workload.num_requests or use a longer trace"
        )
    kept = times[:num_requests]
    return [(t - kept[0]) / speed for t in kept] if kept else []


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


def _parse_time(path: Path, lineno: int, text: str) -> float:
    value = _number(text)
    if value is not None:
        return value
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise TraceError(f"{path}:{lineno}: {text!r} is neither seconds nor an ISO-8601 time") from None


def _plain_time(path: Path, lineno: int, line: str) -> float:
    value = _number(line)
    if value is None:
        raise TraceError(f"{path}:{lineno}: expected a number of seconds, got {line!r}")
    return value


def _jsonl_time(path: Path, lineno: int, line: str) -> float:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise TraceError(f"{path}:{lineno}: not valid JSON ({error})") from None
    key = next((k for k in TIME_KEYS if isinstance(row, dict) and k in row), None)
    if key is None:
        raise TraceError(f"{path}:{lineno}: expected an object with one of the keys {list(TIME_KEYS)}")
    return _parse_time(path, lineno, str(row[key]))


def _csv_times(path: Path, lines: list[tuple[int, str]]) -> list[float]:
    rows = list(csv.reader(line for _, line in lines))
    header = [name.strip().lower() for name in rows[0]]
    column = next((header.index(k) for k in TIME_KEYS if k in header), None)
    if column is None:
        raise TraceError(
            f"{path}:{lines[0][0]}: a CSV trace needs a header with one of the columns {list(TIME_KEYS)}, got {rows[0]}"
        )
    times = []
    for (lineno, _), row in zip(lines[1:], rows[1:], strict=True):
        if column >= len(row):
            raise TraceError(f"{path}:{lineno}: no value in column {header[column]!r}")
        times.append(_parse_time(path, lineno, row[column]))
    return times
