"""Data plane: moves tensors between ranks behind one interface (nccl | shm | zmq).

backend = build_transfer(TransferConfig(backend="shm"), rank, world_size, device, store, secret)
handle = backend.send(dst, [embeds, grid_thw])   # ship `handle` over the control plane
tensors = backend.recv(handle)                    # on dst, bit-exact, on its device (after ready(handle))
backend.recv_into(handle, [kv_a, kv_b])           # or into tensors made beforehand (e.g. KV-cache blocks)
backend.poll()                                    # every event-loop iteration, both sides

shm keeps its segments and its device staging arena per peer (opened once at each end); zmq stripes
large transfers over several TCP connections (``zmq_lanes.py``). See each backend's docstring.
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
