"""The launcher's environment (torchrun's variables), read once at the edge."""

from __future__ import annotations

import logging
import os

from epd.launch.rank import RankContext


def under_launcher() -> bool:
    """True when torchrun (or epd's own spawner) started this process as one rank of a job."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_PORT" in os.environ


def context_from_env() -> RankContext:
    return RankContext(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        store_host=os.environ["MASTER_ADDR"],
        store_port=int(os.environ["MASTER_PORT"]),
    )


def setup_logging(rank: int) -> None:
    logging.basicConfig(level=logging.INFO, format=f"[%(asctime)s][rank{rank}][%(levelname)s] %(message)s")
