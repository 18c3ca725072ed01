"""The jsonl logger: results.json in the run directory (metrics.jsonl live).

Each request's record is also appended to ``records.jsonl`` as it finishes (``epd.metrics.writer``),
by the frontend, whatever logger is configured.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from epd.metrics.environment import environment_info
from epd.metrics.loggers import LOGGERS
from epd.metrics.loggers.base import MetricsLogger, to_jsonable
from epd.metrics.records import RequestRecord

RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.jsonl"


@LOGGERS.register("jsonl")
class JsonlLogger(MetricsLogger):
    """Writes `results.json`: {"config", "environment", "summary", "requests"} where each
    request is a record's fields (id, arrival, timestamps, token_times, output_token_ids,
    output_text, num_prompt_tokens, error, warmup, ttft_ms, tpot_ms, e2e_ms, ...), in workload
    order. Strict JSON, replaced atomically. `log` appends {"step", "time", **metrics} lines to
    `metrics.jsonl`."""

    def __init__(self, run_dir: Path, **options: Any) -> None:
        if options:
            raise ValueError(f"logger jsonl takes no options, got logger.options={options}")
        self.run_dir = Path(run_dir)
        self._metrics_file: IO[str] | None = None

    def log(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self._metrics_file is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._metrics_file = (self.run_dir / METRICS_FILE).open("a", buffering=1)
        line = to_jsonable({"step": step, "time": time.time(), **metrics})
        self._metrics_file.write(json.dumps(line, allow_nan=False) + "\n")

    def log_run(self, config: Any, summary: dict, records: Sequence[RequestRecord]) -> None:
        requests = [to_jsonable(record) for record in records]
        head = {
            "config": to_jsonable(config),
            "environment": to_jsonable(environment_info()),
            "summary": to_jsonable(summary),
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(request, allow_nan=False) for request in requests]
        atomic_write_text(self.run_dir / RESULTS_FILE, _results_text(head, lines))

    def close(self) -> None:
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None


def _results_text(head: dict, request_lines: list[str]) -> str:
    """Indented config/environment/summary; one compact line per request (long runs have
    millions of token times, which one-number-a-line indentation would make unreadable)."""
    text = json.dumps(head, indent=2, allow_nan=False)
    assert text.endswith("\n}")
    requests = ",\n".join(f"    {line}" for line in request_lines)
    return f'{text[:-2]},\n  "requests": [\n{requests}\n  ]\n}}\n'


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to a temp file beside `path`, fsync, then rename over `path`: readers see
    the old file or the new one, never half of one."""
    tmp_path = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp_path.open("w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp_path, path)
