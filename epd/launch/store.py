"""The job's key-value store (a ``torch.distributed.TCPStore``), bound only where it must be reachable.

torch's TCPStore listens on every interface; epd hands it a socket it bound itself, so a single-node
job's store is reachable from this host only. Nothing secret is kept in it: peer addresses are
sealed with the job secret (``epd.protocol.auth``), and the process group's own keys are torch's.
"""

from __future__ import annotations

import socket
from datetime import timedelta

import torch.distributed as dist

STORE_TIMEOUT = timedelta(minutes=10)


def serve_store(host: str = "127.0.0.1", port: int = 0) -> tuple[dist.TCPStore, int]:
    """A master TCPStore listening on ``host:port`` only (port 0: any free one); returns it and its port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    port = sock.getsockname()[1]
    fd = sock.detach()  # the store owns the listening socket from here on
    store = dist.TCPStore(
        host, port, is_master=True, timeout=STORE_TIMEOUT, wait_for_workers=False, master_listen_fd=fd
    )
    return store, port


def connect_store(host: str, port: int) -> dist.TCPStore:
    return dist.TCPStore(host, port, is_master=False, timeout=STORE_TIMEOUT)
