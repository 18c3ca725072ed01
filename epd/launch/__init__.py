"""Launch: topology → ranks, spawning, and the per-rank event loop."""

from epd.launch.topology import InstanceConfig, TopologyConfig

__all__ = ["InstanceConfig", "TopologyConfig"]
