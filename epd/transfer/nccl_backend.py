"""nccl: torch.distributed point-to-point on the launcher's process group (gloo on CPU)."""

from __future__ import annotations

import queue
import threading
from collections import defaultdict

import msgspec
import torch
import torch.distributed as dist

from epd.transfer.base import (
    TensorSpec,
    TransferBackend,
    TransferConfig,
    TransferHandle,
    as_bytes,
    check_out,
    dtype_from_name,
    from_bytes,
)

# Tensors smaller than this share one flat buffer and one p2p op (grid_thw, deepstack scales,
# ...); larger ones go as their own op straight from their memory, with no packing copy.
PACK_LIMIT_BYTES = 1 << 20


class _WireInfo(msgspec.Struct, frozen=True):
    device_type: str  # where the sender's p2p buffers live; the receiver must match it


def pack_layout(specs: list[TensorSpec]) -> tuple[list[int | None], int]:
    """Byte offset of each small tensor in the packed buffer (None: own op or empty), its size.

    Small tensors are packed by decreasing itemsize, so every offset is a multiple of its
    tensor's itemsize and the receiver can view the slices as their dtypes without copies.
    """
    offsets: list[int | None] = [None] * len(specs)
    small = [i for i, s in enumerate(specs) if 0 < s.nbytes < PACK_LIMIT_BYTES]
    small.sort(key=lambda i: -dtype_from_name(specs[i].dtype).itemsize)
    packed_nbytes = 0
    for i in small:
        offsets[i] = packed_nbytes
        packed_nbytes += specs[i].nbytes
    return offsets, packed_nbytes


class _SendWaiter:
    """Gloo send Works only report completion through wait(): a daemon thread waits, in order."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._submitted = 0
        self._completed = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="epd-nccl-send-waiter", daemon=True)
        self._thread.start()

    def submit(self, works: list[dist.Work], keepalive: list[torch.Tensor]) -> None:
        self._submitted += 1
        self._queue.put((works, keepalive))

    @property
    def num_inflight(self) -> int:
        with self._lock:
            return self._submitted - self._completed

    def check(self) -> None:
        if self._error is not None:
            raise RuntimeError("a gloo send failed") from self._error

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self.check()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            works, keepalive = item
            try:
                for work in works:
                    work.wait()
            except BaseException as exc:  # surfaced on the owner's thread by check()
                self._error = exc
            del works, keepalive, item  # drop the tensors before counting the send done
            with self._lock:
                self._completed += 1


class NcclBackend(TransferBackend):
    """torch.distributed isend/irecv on a dedicated group (NCCL on GPU, gloo on CPU).

    Construction is collective: every rank builds it. It creates a process group over all
    ranks and, on CUDA, initialises that group's communicator and connects every pair, so no
    later send() blocks on NCCL's lazy connection handshake (which needs the receiver).

    Ordering contract: p2p ops between a pair match in posting order (NCCL ignores tags), so
    a receiver must call recv() for the handles of one source in the order that source sent
    them; the control plane over one ZMQ connection preserves that order. An out-of-order
    handle raises. A handle that will not be used must still be discard()ed, in order.
    Ship each handle as soon as send() returns: on GPU a pending send is a kernel waiting for
    its receiver, so anything that synchronizes the device (torch.cuda.synchronize, a cudaMalloc
    that grows the caching allocator, empty_cache) stalls until the receiver posts its recv.
    close() waits until every send was received.
    """

    name = "nccl"

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
        super().__init__(cfg, rank, world_size, device, store, secret, bind_host)
        if not dist.is_initialized():
            raise ValueError("transfer.backend=nccl needs torch.distributed initialised by the launcher")
        if (dist.get_rank(), dist.get_world_size()) != (rank, world_size):
            raise ValueError(
                f"rank/world_size {rank}/{world_size} differ from torch.distributed's "
                f"{dist.get_rank()}/{dist.get_world_size()}"
            )
        self._group = dist.new_group()  # transfers never queue behind other traffic
        self._wire = _WireInfo(device_type=self.device.type)
        self._payload = msgspec.msgpack.encode(self._wire)
        self._expected_id: dict[int, int] = defaultdict(int)
        self._inflight: list[tuple[list[dist.Work], list[torch.Tensor]]] = []
        self._waiter: _SendWaiter | None = None
        if self.device.type == "cuda":
            # The first collective on the group must involve every rank (batch_isend_irecv note).
            dist.all_reduce(torch.zeros(1, device=self.device), group=self._group)
            self._connect_all_pairs()
        else:
            self._waiter = _SendWaiter()
        self._closed = False

    def _connect_all_pairs(self) -> None:
        """Exchange one byte with every peer, both ways, in one batch.

        NCCL connects a pair lazily, on its first p2p op, with a handshake that blocks the host
        of both sides: a send() posted before its receiver has the handle would block forever.
        Costs NCCL's p2p buffers for every peer (tens of MB each on NVLink).
        """
        peers = [r for r in range(self.world_size) if r != self.rank]
        ones = torch.ones(len(peers), dtype=torch.uint8, device=self.device)
        got = torch.zeros_like(ones)
        ops = [dist.P2POp(dist.isend, ones[i : i + 1], p, group=self._group) for i, p in enumerate(peers)]
        ops += [dist.P2POp(dist.irecv, got[i : i + 1], p, group=self._group) for i, p in enumerate(peers)]
        for work in dist.batch_isend_irecv(ops) if ops else []:
            work.wait()
        torch.cuda.synchronize(self.device)
        assert bool(got.all()), "nccl warm-up exchange lost bytes"

    def send(self, dst: int, tensors: list[torch.Tensor]) -> TransferHandle:
        self._check_dst(dst)
        if dst == self.rank:
            raise ValueError("the nccl backend cannot send to its own rank; use shm for that")
        data = [as_bytes(t).to(self.device) for t in tensors]  # each: [nbytes] uint8 on device
        specs = [TensorSpec.of(t) for t in tensors]
        offsets, packed_nbytes = pack_layout(specs)
        buffers = [d for d, off in zip(data, offsets, strict=True) if off is None and d.numel() > 0]
        if packed_nbytes:
            small = sorted((off, i) for i, off in enumerate(offsets) if off is not None)
            buffers.insert(0, torch.cat([data[i] for _, i in small]))  # packed: [packed_nbytes]
        if buffers:
            ops = [dist.P2POp(dist.isend, buf, dst, group=self._group) for buf in buffers]
            works = dist.batch_isend_irecv(ops)
            if self._waiter is not None:
                self._waiter.submit(works, buffers)
            else:
                self._inflight.append((works, buffers))
        return self._new_handle(dst, specs, self._payload)

    def recv(self, handle: TransferHandle) -> list[torch.Tensor]:
        return self._receive(handle, None)

    def recv_into(self, handle: TransferHandle, out: list[torch.Tensor]) -> None:
        check_out(handle.specs, out)
        if any(t.device != self.device for t in out):
            raise ValueError(f"nccl recv_into: every output must be on {self.device}")
        self._receive(handle, out)

    def _receive(self, handle: TransferHandle, out: list[torch.Tensor] | None) -> list[torch.Tensor]:
        """Post the irecvs of ``handle``: large tensors straight into ``out`` when given (else into new
        tensors), small ones into one packed buffer, copied out after the receive when ``out`` is given."""
        self._check_handle(handle)
        wire = msgspec.msgpack.decode(handle.payload, type=_WireInfo)
        if wire.device_type != self.device.type:
            raise ValueError(
                f"rank {handle.src} sends nccl buffers on {wire.device_type} but rank {self.rank} "
                f"receives on {self.device.type}: every rank needs the same device type"
            )
        expected = self._expected_id[handle.src]
        if handle.transfer_id != expected:
            raise RuntimeError(
                f"nccl handles from rank {handle.src} must be received in send order: "
                f"expected transfer {expected}, got {handle.transfer_id}"
            )
        self._expected_id[handle.src] = expected + 1
        offsets, packed_nbytes = pack_layout(handle.specs)
        outputs: list[torch.Tensor | None] = [None] * len(handle.specs)
        buffers: list[torch.Tensor] = []
        if packed_nbytes:
            packed = torch.empty(packed_nbytes, dtype=torch.uint8, device=self.device)
            buffers.append(packed)
        for i, (spec, off) in enumerate(zip(handle.specs, offsets, strict=True)):
            if off is not None:
                outputs[i] = from_bytes(packed[off : off + spec.nbytes], spec)
                continue
            if out is not None:
                data = as_bytes(out[i])  # contiguous: a view, received in place
            else:
                data = torch.empty(spec.nbytes, dtype=torch.uint8, device=self.device)
            outputs[i] = from_bytes(data, spec)
            if spec.nbytes:
                buffers.append(data)
        if buffers:
            ops = [dist.P2POp(dist.irecv, buf, handle.src, group=self._group) for buf in buffers]
            for work in dist.batch_isend_irecv(ops):
                work.wait()  # gloo: blocks the host; NCCL: orders the current stream after it
        if out is not None:
            for i, off in enumerate(offsets):
                if off is not None:
                    out[i].copy_(outputs[i])  # after the receive on the current stream
        return outputs  # type: ignore[return-value]

    def poll(self) -> None:
        if self._waiter is not None:
            self._waiter.check()
        self._inflight = [(w, b) for w, b in self._inflight if not all(x.is_completed() for x in w)]

    @property
    def num_inflight(self) -> int:
        return self._waiter.num_inflight if self._waiter is not None else len(self._inflight)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._waiter is not None:
            self._waiter.close()
        for works, _ in self._inflight:
            for work in works:
                work.wait()
        if self._inflight:
            torch.cuda.current_stream(self.device).synchronize()
        self._inflight.clear()
