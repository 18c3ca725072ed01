"""``RecordWriter``: each finished request's record appended to the run directory the moment it ends.

``records.jsonl`` holds one JSON line per request as it finishes (failed and aborted ones too), flushed
to the operating system at once, so whatever stops the job — a crash, Ctrl-C, SIGKILL of the frontend
itself — what finished stays on disk; ``python -m epd.results <run dir>`` rebuilds results.json from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO

from epd.metrics.loggers.base import to_jsonable
from epd.metrics.records import RequestRecord

RECORDS_FILE = "records.jsonl"
"""Results, one request a line, in the order they finished (results.json lists them in workload order)."""


class RecordWriter:
    def __init__(self, run_dir: Path) -> None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(run_dir) / RECORDS_FILE
        self._file: IO[str] | None = self.path.open("a", encoding="utf-8")

    def write(self, record: RequestRecord) -> None:
        if self._file is None:
            raise RuntimeError("the record writer is closed")
        self._file.write(json.dumps(to_jsonable(record), allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
