"""The launcher's environment (torchrun's or epd's own variables), read once at the edge."""

from __future__ import annotations

import os

from epd.launch.rank import RankContext


def under_launcher() -> bool:
    """True when torchrun (or epd's own launcher) started this process as one rank of a job."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_PORT" in os.environ


def context_from_env() -> RankContext:
    supervised = "EPD_LAUNCHER_PID" in os.environ
    world_size = int(os.environ["WORLD_SIZE"])
    return RankContext(
        rank=int(os.environ["RANK"]),
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        store_host=os.environ["MASTER_ADDR"],
        store_port=int(os.environ["MASTER_PORT"]),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world_size)),
        launcher_pid=int(os.environ["EPD_LAUNCHER_PID"]) if supervised else os.getppid(),
        supervised=supervised,
    )
