"""Every config group's full set of keys with their defaults, registered as Hydra schema nodes.

A group's YAML files start from ``/schema/<group>`` (their defaults list) and set only what differs,
so any field of the dataclass can be overridden from the command line (``model.path=...``) even
when that YAML does not mention it, and YAML cannot drift from the dataclasses.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hydra.core.config_store import ConfigStore

from epd.config.convert import to_dict
from epd.encoder.config import EncoderConfig
from epd.language.config import EngineConfig
from epd.launch.config import LaunchConfig
from epd.launch.topology import TopologyConfig
from epd.media.config import MediaConfig
from epd.metrics import LoggerConfig
from epd.models.config import ModelConfig
from epd.scheduler.config import SchedulerConfig
from epd.server.config import ServerConfig
from epd.transfer import TransferConfig
from epd.workload import WorkloadConfig

GROUPS: dict[str, type] = {
    "model": ModelConfig,
    "topology": TopologyConfig,
    "transfer": TransferConfig,
    "scheduler": SchedulerConfig,
    "encoder": EncoderConfig,
    "engine": EngineConfig,
    "workload": WorkloadConfig,
    "logger": LoggerConfig,
    "media": MediaConfig,
    "launch": LaunchConfig,
    "server": ServerConfig,
}


def field_defaults(cls: type) -> dict[str, Any]:
    """``cls``'s fields and defaults, without building an instance (no validation runs)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = to_dict(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = to_dict(f.default_factory())
        else:
            out[f.name] = None
    return out


def register_schemas() -> None:
    cs = ConfigStore.instance()
    for group, cls in GROUPS.items():
        cs.store(group="schema", name=group, node=field_defaults(cls))
