"""``LaunchConfig``: how a job's processes start, find each other and watch each other (``launch`` group)."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass


@dataclass(kw_only=True)
class LaunchConfig:
    """Process-level settings of a job: addresses, liveness, message limits, nodes."""

    bind_address: str = "auto"
    """Address every control and data socket binds and advertises. ``auto``: 127.0.0.1 for a
    single-node job; for a multi-node job, this node's address on the route to ``master_addr`` (the
    network between the nodes must then be trusted not to read epd's traffic: see the README)."""
    heartbeat_interval_s: float = 1.0
    """How often every process tells its watchers it is alive."""
    heartbeat_timeout_s: float = 30.0
    """A process silent this long is named and treated as dead: a lost encoder's items go to the
    others; a lost language rank (or frontend) stops the job, keeping every finished result."""
    max_message_bytes: int = 16 << 20
    """Largest control message a process accepts (ZMQ's MAXMSGSIZE); a peer sending more is cut off."""
    shutdown_grace_s: float = 10.0
    """How long the launcher waits for processes to leave after the job ended before killing them."""
    nnodes: int = 1
    """Nodes of the job (epd's own launcher; torchrun's ``--nnodes`` is read from its environment)."""
    node_rank: int = 0
    """This node's index, 0 .. nnodes-1 (epd's own launcher)."""
    master_addr: str = "127.0.0.1"
    """Address of node 0, where the job's store and frontend run (epd's own launcher, multi-node)."""
    master_port: int = 0
    """Port of the job's store on node 0 (0: any free one; a multi-node job must name one)."""

    def __post_init__(self) -> None:
        for key in ("heartbeat_interval_s", "heartbeat_timeout_s", "shutdown_grace_s"):
            value = getattr(self, key)
            if not (isinstance(value, int | float) and 0 < value < math.inf):
                raise ValueError(f"launch.{key}={value!r}: set a finite number of seconds > 0")
        if self.heartbeat_timeout_s < 2 * self.heartbeat_interval_s:
            raise ValueError(
                f"launch.heartbeat_timeout_s={self.heartbeat_timeout_s} must be at least twice "
                f"launch.heartbeat_interval_s={self.heartbeat_interval_s}"
            )
        if self.max_message_bytes < 1 << 16:
            raise ValueError(f"launch.max_message_bytes={self.max_message_bytes}: set 65536 or more")
        if self.nnodes < 1 or not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"launch.node_rank={self.node_rank} must be in 0..launch.nnodes-1 ({self.nnodes} nodes)")
        if not 0 <= self.master_port <= 65535:
            raise ValueError(f"launch.master_port={self.master_port}: a TCP port, 0 = any free one")
        if self.nnodes > 1 and self.master_port == 0:
            raise ValueError("a multi-node job needs launch.master_port=<port> (the same on every node)")
        if self.bind_address != "auto":
            try:
                ipaddress.ip_address(self.bind_address)
            except ValueError:
                raise ValueError(
                    f"launch.bind_address={self.bind_address!r}: give an IP address of this host, or auto"
                ) from None
