"""The clock epd's roles stamp their events with: wall time, unless a simulator installs its own.

The encoder role and the language sequences read ``clock.now()`` instead of ``time.time()``, so
``epd.sim`` can drive them on a simulated clock. In real runs nothing is installed and ``now`` is
``time.time`` itself. The simulator is single-threaded; nothing here is meant for threads that run
while another clock is installed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_source: Callable[[], float] = time.time


def now() -> float:
    """Seconds on the installed clock (wall time, ``time.time()``, unless a simulator installed one)."""
    return _source()


@contextmanager
def installed(source: Callable[[], float]) -> Iterator[None]:
    """Read time from ``source`` inside the block (the simulator's clock); wall time again after it."""
    global _source
    previous, _source = _source, source
    try:
        yield
    finally:
        _source = previous
