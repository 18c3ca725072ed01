"""The typed configuration of a run: Hydra's composed config is converted here, once, at the edge.

Each component's dataclass sits beside the code it configures; ``RunConfig`` only gathers them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from epd.config.convert import from_dict, to_dict
from epd.encoder.config import EncoderConfig
from epd.language.config import EngineConfig
from epd.launch.config import LaunchConfig
from epd.launch.device import check_devices
from epd.launch.topology import TopologyConfig
from epd.media.config import MediaConfig
from epd.metrics import LoggerConfig
from epd.models.config import ModelConfig
from epd.scheduler.config import SchedulerConfig
from epd.server.config import ServerConfig
from epd.transfer import TransferConfig
from epd.workload import WorkloadConfig


@dataclass(kw_only=True)
class RunConfig:
    """Everything one experiment needs; built by :func:`build_run_config`."""

    model: ModelConfig
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    device: str = "auto"
    """``auto`` (GPU when present), ``cpu`` or ``cuda``."""
    run_dir: str = "."
    """Directory shared by all ranks: results.json, media of synthetic workloads, logs."""

    def __post_init__(self) -> None:
        check_devices(self.device, self.topology, self.transfer.backend, self.launch.nnodes)
        if self.launch.nnodes > 1 and self.transfer.backend == "shm":
            raise ValueError(
                f"transfer=shm moves data through one host's memory, but this job spans {self.launch.nnodes} nodes: "
                "use transfer=nccl (GPUs) or transfer=zmq (any host)"
            )


def build_run_config(data: dict[str, Any]) -> RunConfig:
    """Validate a resolved config mapping; ``ValueError`` says what to change."""
    data = {k: v for k, v in data.items() if k != "hydra"}
    return from_dict(RunConfig, data)


def save_run_config(cfg: RunConfig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(to_dict(cfg), indent=2))
    tmp.replace(path)


def load_run_config(path: Path) -> RunConfig:
    return build_run_config(json.loads(Path(path).read_text()))


__all__ = ["RunConfig", "build_run_config", "from_dict", "load_run_config", "save_run_config", "to_dict"]
