"""Logging of every process of a job: epd's own lines on the console, everything in ``run.log``.

Each process (launcher, ranks, frontend) appends to the run directory's ``run.log`` (whole lines,
O_APPEND: processes do not tear each other's lines). Third-party chatter — progress bars and
warnings from transformers, torch and Pillow — goes to that file only, so the console shows what
epd has to say.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

CONSOLE_FORMAT = "[%(asctime)s][{name}][%(levelname)s] %(message)s"
FILE_FORMAT = "%(asctime)s {name} %(name)s %(levelname)s %(message)s"
RUN_LOG = "run.log"


FILE_ONLY = {"file_only": True}
"""``log.info(..., extra=FILE_ONLY)``: for run.log, not the console."""


class _EpdOnly(logging.Filter):
    """Console: epd's loggers at INFO and up (but not ``FILE_ONLY`` lines); anyone else's only errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "file_only", False):
            return False
        return record.name == "epd" or record.name.startswith("epd.") or record.levelno >= logging.ERROR


def setup_logging(name: str, run_dir: str | Path | None = None, quiet: bool = False) -> None:
    """Console and ``<run_dir>/run.log`` handlers for the process called ``name`` (``rank2``, ``frontend``)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    root = logging.getLogger()
    for handler in list(root.handlers):  # Hydra's, or an earlier call's
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.INFO)
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING if quiet else logging.INFO)
    console.setFormatter(logging.Formatter(CONSOLE_FORMAT.format(name=name)))
    console.addFilter(_EpdOnly())
    root.addHandler(console)
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(Path(run_dir) / RUN_LOG, mode="a", encoding="utf-8")
        file.setFormatter(logging.Formatter(FILE_FORMAT.format(name=name)))
        root.addHandler(file)
    logging.captureWarnings(True)  # warnings.warn → the 'py.warnings' logger → run.log, not the console
    warnings.simplefilter("default")
    _quiet_transformers()


def _quiet_transformers() -> None:
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()
    hf_logging.disable_default_handler()  # its records still reach the root handlers (run.log)
    hf_logging.enable_propagation()
