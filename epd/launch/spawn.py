"""Start a multi-rank job from a plain ``python -m epd.run``: torch's elastic launcher spawns the ranks.

Each rank runs ``python -m epd.launch.worker <epd_config.json>`` with the usual torchrun environment
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT of the launcher's store). When a rank fails the
launcher stops the others; Ctrl-C stops them all.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch


def spawn_ranks(world_size: int, config_file: Path) -> int:
    """Run ``world_size`` ranks on this node; the exit code is 0 only if every rank succeeded."""
    launch = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=world_size,
        run_id=f"epd-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
    )
    try:
        elastic_launch(launch, entrypoint=sys.executable)("-m", "epd.launch.worker", str(config_file))
    except ChildFailedError as exc:
        failures = ", ".join(f"rank {r} (exit {f.exitcode})" for r, f in sorted(exc.failures.items()))
        print(f"epd: a rank failed: {failures}; see its traceback above", file=sys.stderr)
        return 1
    return 0
