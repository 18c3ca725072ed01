"""``python -m epd.frontend <epd_config.json> <store_host> <store_port>``: started by rank 0."""

from __future__ import annotations

import logging
import sys
from datetime import timedelta

import torch.distributed as dist

from epd.config import load_run_config
from epd.frontend.frontend import Frontend


def main(argv: list[str]) -> int:
    config_file, host, port = argv
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][frontend][%(levelname)s] %(message)s")
    cfg = load_run_config(config_file)
    store = dist.TCPStore(host, int(port), is_master=False, timeout=timedelta(minutes=10))
    Frontend(cfg, store).run()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
