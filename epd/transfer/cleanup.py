"""Removing a job's shm segments, whatever way the job ended.

Every segment of a job is named ``<transfer.shm_prefix>-<job id>-...`` (``epd.transfer.shm_backend``);
each rank removes the ones it created and nobody consumed when it closes, and the launcher removes
whatever is left of the job's prefix at the end, so a SIGKILLed rank leaves nothing in /dev/shm.
"""

from __future__ import annotations

import logging
import os

from epd.transfer.base import TransferConfig

log = logging.getLogger("epd")


def job_prefix(cfg: TransferConfig, job: str) -> str:
    """The name prefix of every shm segment of job ``job``."""
    return f"{cfg.shm_prefix}-{job}-"


def remove_job_segments(cfg: TransferConfig, job: str) -> int:
    """Unlink every segment of ``job`` left in ``cfg.shm_dir``; returns how many there were."""
    prefix = job_prefix(cfg, job)
    try:
        names = [n for n in os.listdir(cfg.shm_dir) if n.startswith(prefix)]
    except OSError:
        return 0
    removed = 0
    for name in names:
        try:
            os.unlink(os.path.join(cfg.shm_dir, name))
            removed += 1
        except FileNotFoundError:
            pass  # consumed meanwhile
        except OSError as exc:
            log.warning("could not remove shm segment %s: %s", name, exc)
    if removed:
        log.info("removed %d shm segment(s) the job left in %s", removed, cfg.shm_dir)
    return removed
