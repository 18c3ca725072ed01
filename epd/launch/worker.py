"""Entry of a rank started by :mod:`epd.launch.spawn`: ``python -m epd.launch.worker <epd_config.json>``."""

from __future__ import annotations

import sys

from epd.config import load_run_config
from epd.launch import exit_codes
from epd.launch.env import context_from_env
from epd.launch.logs import setup_logging
from epd.launch.rank import run_rank

if __name__ == "__main__":
    cfg = load_run_config(sys.argv[1])
    ctx = context_from_env()
    setup_logging(f"rank{ctx.rank}", cfg.run_dir, cfg.logger.quiet)
    try:
        sys.exit(run_rank(cfg, ctx))
    except KeyboardInterrupt:
        sys.exit(exit_codes.INTERRUPTED)
