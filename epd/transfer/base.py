"""The data-plane contract: config, wire handle and the backend ABC shared by every backend."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass

import msgspec
import torch
import torch.distributed as dist


@dataclass(kw_only=True)
class TransferConfig:
    """Which data plane moves tensors between ranks, and its knobs (Hydra group `transfer`)."""

    backend: str = "nccl"
    """Registry key: "nccl" (torch.distributed p2p), "shm" (same host: POSIX shm / CUDA IPC) or
    "zmq" (TCP multipart frames, any host)."""
    zmq_host: str = "auto"
    """Address the zmq data socket binds and advertises. "auto": the local address this host uses
    to reach the store's host (127.0.0.1 when the whole job runs on one host)."""
    zmq_port_min: int = 20000
    """Lowest port the zmq data socket may bind (a random free one in [min, max] is taken)."""
    zmq_port_max: int = 65000
    """Highest port the zmq data socket may bind."""
    zmq_linger_ms: int = 1000
    """How long close() lets zmq flush frames not yet delivered (-1: forever)."""
    zmq_streams: int = 4
    """TCP connections per peer that large transfers are striped over (each its own thread at both ends;
    the receiver lands every stripe in place). Transfers from host memory under ``zmq_stream_min_bytes``
    go as one zmq message instead."""
    zmq_stream_min_bytes: int = 1 << 20
    """Smallest transfer striped over the TCP streams (and the smallest stripe); device tensors always
    take the streams, whose threads wait for their device-to-host copies."""
    shm_dir: str = "/dev/shm"
    """tmpfs directory holding the shm segments (POSIX shared memory on Linux)."""
    shm_pool_bytes: int = 1 << 30
    """Host shm kept per (sender, receiver) pair and reused across transfers (mapped once at each end);
    a transfer that does not fit gets a segment of its own. 0: a fresh segment per transfer."""
    shm_cuda_pool_bytes: int = 1 << 30
    """Device memory a sender keeps for staging CUDA tensors (exported once per receiver, with pooled IPC
    events), so no transfer opens an IPC handle; a transfer that does not fit shares its tensors' own
    memory instead (one IPC open per tensor). 0: always share the tensors' memory."""
    shm_prefix: str = "epd"
    """Name prefix of shm segments: ``<prefix>-<job id>-<rank>-<random>``; a receiver opens only names
    of its own job's form, and the launcher removes the job's leftovers however the job ends."""
    recv_timeout_s: float = 300.0
    """An item whose data has not arrived this long after its handle fails (zmq)."""
    max_transfer_bytes: int = 64 << 30
    """Largest single transfer a receiver accepts; a handle describing more is refused before any allocation."""

    def __post_init__(self) -> None:
        from epd.transfer.registry import known_backends

        if self.backend not in known_backends():
            raise ValueError(
                f"transfer.backend={self.backend!r} is not a transfer backend; known: {', '.join(known_backends())}"
            )
        if not 1 <= self.zmq_port_min <= self.zmq_port_max <= 65535:
            raise ValueError(
                f"need 1 <= transfer.zmq_port_min ({self.zmq_port_min}) <= "
                f"transfer.zmq_port_max ({self.zmq_port_max}) <= 65535"
            )
        if self.zmq_linger_ms < -1:
            raise ValueError(f"transfer.zmq_linger_ms must be >= -1, got {self.zmq_linger_ms}")
        if not self.zmq_host:
            raise ValueError('transfer.zmq_host must be an address or "auto", got ""')
        if not self.shm_prefix or "/" in self.shm_prefix:
            raise ValueError(f"transfer.shm_prefix must be a non-empty name without '/', got {self.shm_prefix!r}")
        if not self.recv_timeout_s > 0:
            raise ValueError(f"transfer.recv_timeout_s must be > 0, got {self.recv_timeout_s}")
        if self.zmq_streams < 1:
            raise ValueError(f"transfer.zmq_streams must be >= 1, got {self.zmq_streams}")
        if self.zmq_stream_min_bytes < 1:
            raise ValueError(f"transfer.zmq_stream_min_bytes must be >= 1, got {self.zmq_stream_min_bytes}")
        if self.shm_pool_bytes < 0 or self.shm_cuda_pool_bytes < 0:
            raise ValueError(
                f"transfer.shm_pool_bytes ({self.shm_pool_bytes}) and transfer.shm_cuda_pool_bytes "
                f"({self.shm_cuda_pool_bytes}) must be >= 0"
            )
        if self.max_transfer_bytes < 1:
            raise ValueError(f"transfer.max_transfer_bytes must be >= 1, got {self.max_transfer_bytes}")


class TensorSpec(msgspec.Struct, frozen=True, array_like=True):
    """dtype (torch name without "torch.", e.g. "bfloat16") and shape of one transferred tensor."""

    dtype: str
    shape: list[int]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * dtype_from_name(self.dtype).itemsize

    @classmethod
    def of(cls, tensor: torch.Tensor) -> TensorSpec:
        return cls(dtype=str(tensor.dtype).removeprefix("torch."), shape=list(tensor.shape))


class TransferHandle(msgspec.Struct, frozen=True):
    """Descriptor of one send; the sender ships it to `dst` inside a control-plane message.

    `transfer_id` counts the sends from `src` to `dst` (0, 1, 2, ...). `payload` is backend
    specific: msgpack bytes of a struct the backend decodes (shm segment name, CUDA IPC handles).
    """

    backend: str
    src: int
    dst: int
    transfer_id: int
    specs: list[TensorSpec]
    payload: bytes = b""

    @property
    def nbytes(self) -> int:
        return sum(spec.nbytes for spec in self.specs)


_SAME_WIDTH_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
MAX_DIMS = 8
ALIGN_BYTES = 64  # tensors packed into one buffer start on a cache line: aligned for any dtype


def round_up(nbytes: int, multiple: int = ALIGN_BYTES) -> int:
    return -(-nbytes // multiple) * multiple


def aligned_offsets(sizes: list[int]) -> tuple[list[int], int]:
    """Where each of ``sizes`` bytes starts when packed back to back on ``ALIGN_BYTES`` boundaries, and
    the packed length (the end of the last one)."""
    offsets, end = [], 0
    for size in sizes:
        offsets.append(round_up(end))
        end = offsets[-1] + size
    return offsets, end


def dtype_from_name(name: str) -> torch.dtype:
    """torch.dtype for a TensorSpec dtype name; ValueError when torch has no such dtype."""
    dtype = getattr(torch, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown torch dtype {name!r}")
    return dtype


def check_specs(specs: list[TensorSpec], max_bytes: int) -> None:
    """``ValueError`` unless every spec names a torch dtype and a shape of at most ``MAX_DIMS``
    non-negative sizes, and all of them together hold at most ``max_bytes``."""
    total = 0
    for spec in specs:
        dtype_from_name(spec.dtype)
        if len(spec.shape) > MAX_DIMS or any(not isinstance(d, int) or d < 0 for d in spec.shape):
            raise ValueError(f"bad tensor shape {spec.shape!r} in a transfer handle")
        total += spec.nbytes
        if total > max_bytes:
            raise ValueError(f"a transfer handle describes more than transfer.max_transfer_bytes={max_bytes}")


def check_out(specs: list[TensorSpec], out: list[torch.Tensor]) -> None:
    """``ValueError`` unless ``out`` holds one contiguous tensor of each spec's dtype and shape."""
    if len(out) != len(specs):
        raise ValueError(f"recv_into: {len(out)} output tensors for a transfer of {len(specs)}")
    for i, (tensor, spec) in enumerate(zip(out, specs, strict=True)):
        if TensorSpec.of(tensor) != spec or not tensor.is_contiguous():
            raise ValueError(
                f"recv_into: output {i} is {tensor.dtype} {list(tensor.shape)}"
                f"{'' if tensor.is_contiguous() else ' (not contiguous)'}; the transfer holds {spec.dtype} {spec.shape}"
            )


def as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """The raw bytes of `tensor`, contiguous, as a flat uint8 tensor on the same device.

    Bit-exact for every dtype (bfloat16, float8, bool, complex, ...): no value conversion.
    """
    if tensor.layout != torch.strided or tensor.is_quantized:
        raise ValueError(f"only dense strided tensors can be transferred, got {tensor.layout}")
    # Reinterpret as an integer type of the same width first: some dtypes (int1..7, bits8, ...)
    # have no copy kernel for contiguous(); integer copies move bits unchanged.
    tensor = tensor.detach().view(_SAME_WIDTH_INT.get(tensor.dtype.itemsize, tensor.dtype))
    # x: [*shape] -> [numel] -> [nbytes]; reshape(-1) also turns a 0-d tensor into [1]
    return tensor.contiguous().reshape(-1).view(torch.uint8)


def from_bytes(data: torch.Tensor, spec: TensorSpec) -> torch.Tensor:
    """Inverse of as_bytes: reinterpret flat uint8 `data` ([spec.nbytes]) as `spec`, no copy."""
    assert data.dtype == torch.uint8 and data.numel() == spec.nbytes, (data.shape, spec)
    return data.view(dtype_from_name(spec.dtype)).view(spec.shape)


class TransferBackend(ABC):
    """Moves lists of tensors from one rank to another; the control plane carries the handle.

    Contract:
    - `send(dst, tensors)` starts the transfer and returns at once with a `TransferHandle`; the
      caller ships the handle to `dst` over the control plane. The tensors must not be modified
      until the send completes (`num_inflight` drops; `poll()` notices). On CUDA the send is
      ordered after the work already queued on the current stream.
    - `recv(handle)` on `dst` returns new tensors on this backend's `device`, bit-exact, with the
      specs' dtypes and shapes; on CUDA they are ready for the current stream. Every handle must
      be passed to exactly one `recv` or `discard` on its destination. Backend-specific ordering
      rules (nccl: per source, in send order) are in each backend's docstring.
    - `poll()` makes progress without blocking: frees finished sends, sends acks, drains sockets.
      The owner's event loop calls it every iteration.
    - `close()` finishes or cancels what is in flight and frees every resource; idempotent.
    """

    name: str = ""

    def __init__(
        self,
        cfg: TransferConfig,
        rank: int,
        world_size: int,
        device: torch.device,
        store: dist.Store,
        secret: bytes | None = None,
        bind_host: str | None = None,
    ) -> None:
        """``secret``: the job secret (backends with sockets of their own authenticate with it; None in
        benchmarks). ``bind_host``: where such sockets bind (None: the store's route, as ``auto``)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self.store = store
        self.secret = secret
        self.bind_host = bind_host
        self._next_transfer_id: dict[int, int] = defaultdict(int)

    @abstractmethod
    def send(self, dst: int, tensors: list[torch.Tensor]) -> TransferHandle:
        """Start sending `tensors` to rank `dst`; returns the handle to ship to `dst`."""

    @abstractmethod
    def recv(self, handle: TransferHandle) -> list[torch.Tensor]:
        """Receive the tensors of `handle` (sent to this rank) on `self.device`."""

    def recv_into(self, handle: TransferHandle, out: list[torch.Tensor]) -> None:
        """Receive the tensors of ``handle`` into ``out`` (one tensor per spec, of its dtype and shape, on
        any device), e.g. pre-allocated KV-cache blocks; on CUDA ready for the current stream. Backends
        that can land the data straight in ``out`` override this; the default copies from ``recv``."""
        check_out(handle.specs, out)
        for dst, src in zip(out, self.recv(handle), strict=True):
            dst.copy_(src, non_blocking=True)

    def discard(self, handle: TransferHandle) -> None:
        """Consume `handle` without keeping its tensors (e.g. the request was aborted)."""
        self.recv(handle)

    def ready(self, handle: TransferHandle) -> bool:
        """Whether `recv(handle)` would find its data here now (backends whose data can lag the handle
        say so, so the owner's loop never blocks on it); True by default."""
        return True

    def poll(self) -> None:  # noqa: B027 - a backend with nothing to progress keeps this no-op
        """Make progress without blocking: free completed sends, deliver acks, drain sockets."""

    @property
    def num_inflight(self) -> int:
        """Sends whose tensors this backend still holds (not yet known to be complete)."""
        return 0

    @abstractmethod
    def close(self) -> None:
        """Release every resource; safe to call twice."""

    def __enter__(self) -> TransferBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_dst(self, dst: int) -> None:
        if not 0 <= dst < self.world_size:
            raise ValueError(f"dst {dst} is outside world_size {self.world_size}")

    def _new_handle(self, dst: int, specs: list[TensorSpec], payload: bytes = b"") -> TransferHandle:
        self._check_dst(dst)
        transfer_id = self._next_transfer_id[dst]
        self._next_transfer_id[dst] = transfer_id + 1
        return TransferHandle(
            backend=self.name, src=self.rank, dst=dst, transfer_id=transfer_id, specs=specs, payload=payload
        )

    def _check_handle(self, handle: TransferHandle) -> None:
        """Every field of a handle that came over the control plane, before anything is done with it."""
        if handle.backend != self.name:
            raise ValueError(f"a {handle.backend!r} handle was passed to the {self.name!r} backend")
        if handle.dst != self.rank:
            raise ValueError(f"handle for rank {handle.dst} received on rank {self.rank}")
        if not 0 <= handle.src < self.world_size or handle.src == self.rank and self.name == "nccl":
            raise ValueError(f"handle from rank {handle.src}, not a peer of rank {self.rank}")
        check_specs(handle.specs, self.cfg.max_transfer_bytes)
