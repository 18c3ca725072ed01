"""Data plane: moves tensors between ranks behind one interface (nccl | shm | zmq).

backend = build_transfer(TransferConfig(backend="shm"), rank, world_size, device, store)
handle = backend.send(dst, [embeds, grid_thw])   # ship `handle` over the control plane
tensors = backend.recv(handle)                    # on dst, bit-exact, on its device
backend.poll()                                    # every event-loop iteration, both sides
"""

from epd.transfer.base import (
    TensorSpec,
    TransferBackend,
    TransferConfig,
    TransferHandle,
    as_bytes,
    dtype_from_name,
    from_bytes,
)
from epd.transfer.registry import build_transfer, known_backends, register_backend

__all__ = [
    "TensorSpec",
    "TransferBackend",
    "TransferConfig",
    "TransferHandle",
    "as_bytes",
    "build_transfer",
    "dtype_from_name",
    "from_bytes",
    "known_backends",
    "register_backend",
]
