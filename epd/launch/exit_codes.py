"""What a job's exit code means (``python -m epd.run``, ``epd-run``, the frontend process).

| code | meaning |
|---|---|
| 0 | every request succeeded |
| 1 | the job failed: a rank or the frontend died or went silent, or epd hit an internal error; finished results are kept |
| 2 | nothing ran: the configuration or the workload is wrong (the message names the key, file and line) |
| 3 | the run finished, but some requests failed (their errors are in results.json) |
| 130 | stopped by Ctrl-C (SIGINT); finished results are kept |
| 143 | stopped by SIGTERM; finished results are kept |
"""

from __future__ import annotations

import signal

OK = 0
JOB_FAILED = 1
BAD_CONFIG = 2
REQUESTS_FAILED = 3
INTERRUPTED = 128 + signal.SIGINT
TERMINATED = 128 + signal.SIGTERM


def for_signal(signum: int) -> int:
    return INTERRUPTED if signum == signal.SIGINT else TERMINATED if signum == signal.SIGTERM else JOB_FAILED


def describe_exit(returncode: int) -> str:
    """``exited with code 1`` / ``was killed by SIGKILL`` for a ``Popen.returncode``."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"
