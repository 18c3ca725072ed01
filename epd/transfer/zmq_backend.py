"""zmq: multipart TCP frames between any hosts, zero-copy on both ends where possible."""

from __future__ import annotations

import hmac
import logging
import time

import msgspec
import torch
import torch.distributed as dist
import zmq

from epd.net import reachable_address
from epd.protocol.auth import Rejected, mac, seal_value, unseal_value
from epd.transfer.base import (
    TensorSpec,
    TransferBackend,
    TransferConfig,
    TransferHandle,
    as_bytes,
    dtype_from_name,
    from_bytes,
)

STORE_KEY = "epd/transfer/zmq/{rank}"  # -> "tcp://host:port" of that rank's PULL data socket
log = logging.getLogger("epd.transfer")


class _Header(msgspec.Struct, frozen=True, array_like=True):
    src: int
    transfer_id: int
    nbytes: list[int]  # of each following frame, checked against the handle's specs


def resolve_host(host: str, store: dist.Store) -> str:
    """`host`, or for "auto" the local address that routes to the store's host."""
    return reachable_address(store) if host == "auto" else host


class ZmqBackend(TransferBackend):
    """Each rank binds a PULL socket and publishes its address in the store; senders PUSH.

    A send is one multipart message [header, bytes of tensor 0, bytes of tensor 1, ...] sent
    with copy=False from the tensors' own host memory (CUDA tensors: staged into pinned host
    memory on a side stream, shipped by poll() once the copy is done). The receiver keeps
    arrived messages by (src, transfer_id), so data and handle may arrive in either order and
    handles may be received in any order; tensors view the received frames (zero copy on CPU).
    Construction is local; recv() raises TimeoutError after cfg.recv_timeout_s without data.

    With the job secret, every message carries a tag over its header: a receiver drops (and counts)
    anything else pushed into its socket, so no stray process can pose as a sender's data.
    """

    name = "zmq"

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
        self._context = zmq.Context(io_threads=1)  # its own I/O thread: bulk data never delays control
        self._pull = self._context.socket(zmq.PULL)
        self._pull.setsockopt(zmq.RCVHWM, 0)  # never drop or stall: senders' messages queue here
        self._pull.setsockopt(zmq.MAXMSGSIZE, cfg.max_transfer_bytes)
        host = bind_host if cfg.zmq_host == "auto" and bind_host else resolve_host(cfg.zmq_host, store)
        port = self._pull.bind_to_random_port(f"tcp://{host}", cfg.zmq_port_min, cfg.zmq_port_max + 1)
        self.address = f"tcp://{host}:{port}"
        key = STORE_KEY.format(rank=rank)
        store.set(key, seal_value(secret, key, self.address) if secret is not None else self.address)
        self._push: dict[int, zmq.Socket] = {}
        self._arrived: dict[tuple[int, int], list[zmq.Frame]] = {}
        self._discarded: set[tuple[int, int]] = set()
        # CUDA sends waiting for their device-to-host copy: (copy done, dst, header, host buffers)
        self._staged: list[tuple[torch.cuda.Event, int, bytes, list[torch.Tensor]]] = []
        self._d2h_stream: torch.cuda.Stream | None = None
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(_Header)
        self.dropped = 0  # messages in our socket that were not a peer's data
        self._closed = False

    def send(self, dst: int, tensors: list[torch.Tensor]) -> TransferHandle:
        handle = self._new_handle(dst, [TensorSpec.of(t) for t in tensors])
        data = [as_bytes(t) for t in tensors]  # each: [nbytes] uint8 on the tensor's device
        header = self._encoder.encode(_Header(self.rank, handle.transfer_id, [d.numel() for d in data]))
        if any(d.is_cuda for d in data):
            self._staged.append(self._stage_to_host(dst, header, data))
        else:
            self._ship(dst, header, data)
        return handle

    def ready(self, handle: TransferHandle) -> bool:
        self.poll()
        return (handle.src, handle.transfer_id) in self._arrived

    def recv(self, handle: TransferHandle) -> list[torch.Tensor]:
        self._check_handle(handle)
        key = (handle.src, handle.transfer_id)
        deadline = time.monotonic() + self.cfg.recv_timeout_s
        while True:
            self.poll()  # drains our socket; also ships our staged sends, which a peer may wait for
            if key in self._arrived:
                break
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                raise TimeoutError(f"zmq: no data for transfer {key} after {self.cfg.recv_timeout_s} s")
            self._pull.poll(min(remaining_ms, 10 if self._staged else remaining_ms))
        frames = self._arrived.pop(key)
        if [len(f) for f in frames] != [s.nbytes for s in handle.specs]:
            raise RuntimeError(f"zmq: frames of transfer {key} do not match the handle's specs")
        return [self._to_tensor(frame, spec) for frame, spec in zip(frames, handle.specs, strict=True)]

    def discard(self, handle: TransferHandle) -> None:
        self._check_handle(handle)
        key = (handle.src, handle.transfer_id)
        if self._arrived.pop(key, None) is None:
            self._discarded.add(key)

    def poll(self) -> None:
        while self._staged and self._staged[0][0].query():
            _, dst, header, host = self._staged.pop(0)
            self._ship(dst, header, host)
        self._drain()

    @property
    def num_inflight(self) -> int:
        return len(self._staged)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for done, dst, header, host in self._staged:
            done.synchronize()
            self._ship(dst, header, host)
        self._staged.clear()
        self._arrived.clear()
        self._context.destroy(linger=self.cfg.zmq_linger_ms)

    def _ship(self, dst: int, header: bytes, data: list[torch.Tensor]) -> None:
        sock = self._push.get(dst)
        if sock is None:
            key = STORE_KEY.format(rank=dst)
            address = self.store.get(key).decode()
            if self.secret is not None:
                try:
                    address = unseal_value(self.secret, key, address)
                except Rejected as exc:
                    raise ValueError(f"zmq: rank {dst}'s data address in the store is not this job's") from exc
            sock = self._push[dst] = self._context.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, 0)  # send() never blocks on a slow receiver
            sock.connect(address)
        # zmq holds a reference to each numpy view (hence its tensor) until the bytes are sent
        sock.send_multipart([header, self._tag(header), *(d.numpy() for d in data)], copy=False)

    def _tag(self, header: bytes) -> bytes:
        return mac(self.secret, b"zmq-data", header) if self.secret is not None else b""

    def _stage_to_host(
        self, dst: int, header: bytes, data: list[torch.Tensor]
    ) -> tuple[torch.cuda.Event, int, bytes, list[torch.Tensor]]:
        if self._d2h_stream is None:
            self._d2h_stream = torch.cuda.Stream(next(d.device for d in data if d.is_cuda))
        stream = self._d2h_stream
        stream.wait_stream(torch.cuda.current_stream(stream.device))  # after the producers
        host = []
        with torch.cuda.stream(stream):
            for d in data:
                if not d.is_cuda:
                    host.append(d)
                    continue
                pinned = torch.empty(d.numel(), dtype=torch.uint8, pin_memory=True)
                pinned.copy_(d, non_blocking=True)
                d.record_stream(stream)  # the caller may free d right after send()
                host.append(pinned)
            done = torch.cuda.Event()
            done.record(stream)
        return done, dst, header, host

    def _drain(self) -> None:
        while True:
            try:
                frames = self._pull.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            header = self._authentic(frames)
            if header is None:
                continue
            key = (header.src, header.transfer_id)
            if key in self._discarded:
                self._discarded.remove(key)
            else:
                self._arrived[key] = frames[2:]

    def _authentic(self, frames: list[zmq.Frame]) -> _Header | None:
        """The header of a peer's data message; None (dropped, counted) for anything else."""
        try:
            if len(frames) < 2 or not hmac.compare_digest(frames[1].bytes, self._tag(frames[0].bytes)):
                raise ValueError("bad tag")
            header = self._decoder.decode(frames[0].buffer)
            if [len(f) for f in frames[2:]] != header.nbytes or not 0 <= header.src < self.world_size:
                raise ValueError("frames do not match their header")
        except (ValueError, msgspec.DecodeError) as exc:
            self.dropped += 1
            if self.dropped == 1:
                log.warning(
                    "zmq data plane of rank %d: dropped a message that is not a peer's data (%s)", self.rank, exc
                )
            return None
        return header

    def _to_tensor(self, frame: zmq.Frame, spec: TensorSpec) -> torch.Tensor:
        if spec.nbytes == 0:
            return from_bytes(torch.empty(0, dtype=torch.uint8, device=self.device), spec)
        data = torch.frombuffer(frame.buffer, dtype=torch.uint8)  # views the frame, keeps it alive
        if data.data_ptr() % dtype_from_name(spec.dtype).itemsize:
            data = data.clone()  # zmq aligns frame data to 8 bytes; wider dtypes need a copy
        return from_bytes(data.to(self.device), spec)
