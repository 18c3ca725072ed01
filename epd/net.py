"""Which local address peers can reach this process on."""

from __future__ import annotations

import socket

import torch.distributed as dist


def reachable_address(store: dist.Store) -> str:
    """The local address that routes to the job's store host (127.0.0.1 when the job is on one host)."""
    while isinstance(store, dist.PrefixStore):
        store = store.underlying_store
    if not isinstance(store, dist.TCPStore):
        return "127.0.0.1" if isinstance(store, dist.HashStore) else socket.gethostbyname(socket.gethostname())
    if store.host in ("localhost", "") or store.host.startswith("127."):
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((store.host, store.port))  # UDP: picks the route, sends nothing
        return probe.getsockname()[0]
