"""Registry of transfer backends: name -> "module:Class", imported only when built."""

from __future__ import annotations

import importlib

import torch
import torch.distributed as dist

from epd.transfer.base import TransferBackend, TransferConfig

_BACKENDS: dict[str, str] = {
    "nccl": "epd.transfer.nccl_backend:NcclBackend",
    "shm": "epd.transfer.shm_backend:ShmBackend",
    "zmq": "epd.transfer.zmq_backend:ZmqBackend",
}


def known_backends() -> list[str]:
    """Names accepted by `TransferConfig.backend`, sorted."""
    return sorted(_BACKENDS)


def register_backend(name: str, target: str) -> None:
    """Add a backend: `target` is "package.module:ClassName" of a TransferBackend subclass."""
    if ":" not in target:
        raise ValueError(f"backend target must look like 'package.module:Class', got {target!r}")
    _BACKENDS[name] = target


def build_transfer(
    cfg: TransferConfig,
    rank: int,
    world_size: int,
    device: torch.device,
    store: dist.Store,
    secret: bytes | None = None,
    bind_host: str | None = None,
) -> TransferBackend:
    """Build the backend named by `cfg.backend` for this rank (lazy import of its module).

    Collective for "nccl" (every rank must call it); local for "shm" and "zmq".
    """
    target = _BACKENDS.get(cfg.backend)
    if target is None:
        raise ValueError(f"unknown transfer backend {cfg.backend!r}; known: {', '.join(known_backends())}")
    module_name, class_name = target.split(":")
    backend_cls = getattr(importlib.import_module(module_name), class_name)
    assert issubclass(backend_cls, TransferBackend), target
    return backend_cls(cfg, rank, world_size, device, store, secret, bind_host)
