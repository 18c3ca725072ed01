"""The progress bar of a run: measured requests done / total and the running TTFT p50.

On a terminal the bar is redrawn in place (at most every `min_interval_s`); when the output is a
file or a pipe (logs, CI, a device run) it prints a plain line each time another tenth of the
requests has finished, so logs stay readable. `enabled=False` (`logger.quiet=true`) prints nothing.
"""

from __future__ import annotations

import bisect
import sys
import time
from typing import TextIO

from epd.metrics.records import RequestRecord

BAR_WIDTH = 24


class ProgressBar:
    """Counts finished measured requests of a run of `total`; `update` once per finished request."""

    def __init__(
        self, total: int, *, enabled: bool = True, stream: TextIO | None = None, min_interval_s: float = 0.1
    ) -> None:
        self.total = total
        self.enabled = enabled and total > 0
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval_s = min_interval_s
        self.done = 0
        self.failed = 0
        self._ttfts_ms: list[float] = []  # sorted
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._last_tenth = 0
        self._open = False

    @property
    def ttft_p50_ms(self) -> float | None:
        """Median TTFT of the requests finished so far (lower median for an even count)."""
        if not self._ttfts_ms:
            return None
        return self._ttfts_ms[(len(self._ttfts_ms) - 1) // 2]

    def update(self, record: RequestRecord) -> None:
        """Count `record` as finished (failed when it has an error) and redraw when due."""
        self.done += 1
        if record.error is not None:
            self.failed += 1
        elif record.token_times:
            bisect.insort(self._ttfts_ms, (record.token_times[0] - record.arrival) * 1e3)
        if not self.enabled:
            return
        now = time.monotonic()
        if self.interactive:
            if now - self._last_draw >= self.min_interval_s or self.done == self.total:
                self._draw(now)
        else:
            tenth = self.done * 10 // self.total
            if tenth > self._last_tenth:
                self._last_tenth = tenth
                self.stream.write(self.line(now) + "\n")
                self.stream.flush()

    def line(self, now: float | None = None) -> str:
        """The bar as text: ``[epd] 12/64 |#####...| 19% TTFT p50 812 ms, 1 failed, 41.2 s``."""
        now = time.monotonic() if now is None else now
        filled = BAR_WIDTH * self.done // max(self.total, 1)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        p50 = self.ttft_p50_ms
        parts = [f"[epd] {self.done}/{self.total} |{bar}| {100 * self.done // max(self.total, 1):3d}%"]
        parts.append(f"TTFT p50 {p50:.0f} ms" if p50 is not None else "TTFT p50 -")
        if self.failed:
            parts.append(f"{self.failed} failed")
        parts.append(f"{now - self._start:.1f} s")
        return ", ".join([" ".join(parts[:2]), *parts[2:]])

    def close(self) -> None:
        """End the bar's line on a terminal (safe to call more than once)."""
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False

    def _draw(self, now: float) -> None:
        self._last_draw = now
        self.stream.write("\r" + self.line(now))
        self.stream.flush()
        self._open = True
