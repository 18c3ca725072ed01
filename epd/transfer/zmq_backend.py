"""zmq: TCP between any hosts: small host transfers as one zmq message, the rest striped over lanes."""

from __future__ import annotations

import functools
import hmac
import itertools
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
    aligned_offsets,
    as_bytes,
    check_out,
    dtype_from_name,
    from_bytes,
)
from epd.transfer.zmq_lanes import Lane, Outgoing, StripedSender, stripe_header
from epd.transfer.zmq_lanes_rx import HostBuffers, LaneReceiver

STORE_KEY = "epd/transfer/zmq/{rank}"  # -> "tcp://host:port" of that rank's PULL data socket
LANES_KEY = "epd/transfer/zmq/{rank}/lanes"  # -> "host port" of that rank's lane listener
LANES = b"lanes"  # handle payload of a transfer striped over lanes ("": one zmq message)
log = logging.getLogger("epd.transfer")


class _Header(msgspec.Struct, frozen=True, array_like=True):
    src: int
    transfer_id: int
    nbytes: list[int]  # of each following frame, checked against the handle's specs


def resolve_host(host: str, store: dist.Store) -> str:
    """`host`, or for "auto" the local address that routes to the store's host."""
    return reachable_address(store) if host == "auto" else host


class ZmqBackend(TransferBackend):
    """Any-host data plane over TCP. Each rank binds a zmq PULL socket and a lane listener and publishes
    both addresses in the store (sealed with the job secret).

    - A transfer of host tensors under ``cfg.zmq_stream_min_bytes`` is one multipart zmq message
      [header, tag, bytes of tensor 0, ...] sent with copy=False from the tensors' memory; the receiver
      keeps arrived messages by (src, transfer_id), and its tensors view the frames (zero copy on CPU).
    - Anything larger, and anything on a GPU, is packed (64-byte aligned) into one logical buffer and
      split into up to ``cfg.zmq_streams`` stripes, each sent over its own TCP connection (``zmq_lanes``)
      and received in place: into the output itself on a CPU receiver, into pinned memory on a GPU one
      (then one host-to-device copy in recv()). Device tensors are copied to pinned memory stripe by
      stripe on a side stream; each lane's thread sends its stripe once its copy is done.

    Data and handle may arrive in either order and handles may be received in any order. Construction
    is local; recv() raises TimeoutError after cfg.recv_timeout_s without data. With the job secret,
    every message and stripe carries a tag: a receiver drops (and counts) anything else.
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
        self._pull.setsockopt(zmq.MAXMSGSIZE, min(cfg.max_transfer_bytes, 2 * cfg.zmq_stream_min_bytes + (1 << 20)))
        host = bind_host if cfg.zmq_host == "auto" and bind_host else resolve_host(cfg.zmq_host, store)
        port = self._pull.bind_to_random_port(f"tcp://{host}", cfg.zmq_port_min, cfg.zmq_port_max + 1)
        self.address = f"tcp://{host}:{port}"
        self._publish(STORE_KEY.format(rank=rank), self.address)
        if device.type == "cuda":  # pinned, and reused by torch's caching host allocator
            alloc = functools.partial(torch.empty, dtype=torch.uint8, pin_memory=True)
        else:  # the outputs view the buffer; it is reused once they are freed
            alloc = HostBuffers().get
        self._lanes_rx = LaneReceiver(
            host,
            (cfg.zmq_port_min, cfg.zmq_port_max),
            world_size,
            secret,
            cfg.max_transfer_bytes,
            max_connections=4 * world_size * cfg.zmq_streams + 16,
            alloc=alloc,
        )
        self._publish(LANES_KEY.format(rank=rank), "{} {}".format(*self._lanes_rx.address))
        self._push: dict[int, zmq.Socket] = {}
        self._lanes: dict[int, list[Lane]] = {}
        self._striper = StripedSender(self.rank, secret, cfg.zmq_stream_min_bytes)
        self._outgoing: list[Outgoing] = []
        self._arrived: dict[tuple[int, int], list[zmq.Frame]] = {}
        self._discarded: set[tuple[int, int]] = set()
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(_Header)
        self._dropped = 0  # zmq messages in our socket that were not a peer's data
        self._closed = False

    @property
    def dropped(self) -> int:
        """Messages and lane connections dropped because they were not a peer's data."""
        return self._dropped + self._lanes_rx.dropped

    # ---- sending --------------------------------------------------------------------------------

    def send(self, dst: int, tensors: list[torch.Tensor]) -> TransferHandle:
        self._check_dst(dst)
        data = [as_bytes(t) for t in tensors]  # each: [nbytes] uint8 on the tensor's device
        total = sum(d.numel() for d in data)
        striped = total > 0 and (total >= self.cfg.zmq_stream_min_bytes or any(d.is_cuda for d in data))
        lanes = self._get_lanes(dst) if striped else None  # may raise: before the handle is numbered
        handle = self._new_handle(dst, [TensorSpec.of(t) for t in tensors], LANES if striped else b"")
        if lanes is None:
            header = self._encoder.encode(_Header(self.rank, handle.transfer_id, [d.numel() for d in data]))
            frames = [d.numpy() if not d.is_cuda else b"" for d in data]  # on a GPU: only empty ones come here
            self._zmq_socket(dst).send_multipart([header, self._tag(header), *frames], copy=False)
        else:
            self._outgoing.append(self._striper.send(lanes, handle.transfer_id, data))
        return handle

    # ---- receiving ------------------------------------------------------------------------------

    def ready(self, handle: TransferHandle) -> bool:
        key = (handle.src, handle.transfer_id)
        if handle.payload == LANES:
            return self._lanes_rx.complete(key)
        self._drain()
        return key in self._arrived

    def recv(self, handle: TransferHandle) -> list[torch.Tensor]:
        self._check_handle(handle)
        if handle.payload == LANES:
            buffer, offsets = self._take_striped(handle)
            if buffer.numel() and self.device.type != "cpu":
                buffer = buffer.to(self.device, non_blocking=True)  # from pinned memory: an async copy
            return [from_bytes(buffer[o : o + s.nbytes], s) for o, s in zip(offsets, handle.specs, strict=True)]
        frames = self._wait_message(handle)
        return [self._to_tensor(frame, spec) for frame, spec in zip(frames, handle.specs, strict=True)]

    def recv_into(self, handle: TransferHandle, out: list[torch.Tensor]) -> None:
        check_out(handle.specs, out)
        if handle.payload != LANES:
            return super().recv_into(handle, out)
        self._check_handle(handle)
        buffer, offsets = self._take_striped(handle)
        for o, t in zip(offsets, out, strict=True):
            as_bytes(t).copy_(buffer[o : o + t.nbytes], non_blocking=True)  # as_bytes of contiguous: a view

    def discard(self, handle: TransferHandle) -> None:
        self._check_handle(handle)
        key = (handle.src, handle.transfer_id)
        if handle.payload == LANES:
            self._lanes_rx.discard(key)
        elif self._arrived.pop(key, None) is None:
            self._discarded.add(key)

    def _check_handle(self, handle: TransferHandle) -> None:
        super()._check_handle(handle)
        if handle.payload not in (b"", LANES):
            raise ValueError("malformed zmq handle payload")

    def _take_striped(self, handle: TransferHandle) -> tuple[torch.Tensor, list[int]]:
        key = (handle.src, handle.transfer_id)
        if not self._lanes_rx.wait(key, self.cfg.recv_timeout_s):
            raise TimeoutError(f"zmq: no data for transfer {key} after {self.cfg.recv_timeout_s} s")
        buffer = self._lanes_rx.take(key)  # [total] uint8 on the host
        offsets, total = aligned_offsets([s.nbytes for s in handle.specs])
        if buffer.numel() != total:
            raise RuntimeError(f"zmq: {buffer.numel()} bytes arrived for transfer {key}, its handle says {total}")
        return buffer, offsets

    def _wait_message(self, handle: TransferHandle) -> list[zmq.Frame]:
        key = (handle.src, handle.transfer_id)
        deadline = time.monotonic() + self.cfg.recv_timeout_s
        while True:
            self._drain()
            if key in self._arrived:
                break
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                raise TimeoutError(f"zmq: no data for transfer {key} after {self.cfg.recv_timeout_s} s")
            self._pull.poll(remaining_ms)
        frames = self._arrived.pop(key)
        if [len(f) for f in frames] != [s.nbytes for s in handle.specs]:
            raise RuntimeError(f"zmq: frames of transfer {key} do not match the handle's specs")
        return frames

    # ---- progress and lifetime ------------------------------------------------------------------

    def poll(self) -> None:
        self._outgoing = [job for job in self._outgoing if job.stripes_left]
        self._drain()

    @property
    def num_inflight(self) -> int:
        return sum(1 for job in self._outgoing if job.stripes_left)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        linger_s = None if self.cfg.zmq_linger_ms < 0 else self.cfg.zmq_linger_ms / 1000
        for lane in itertools.chain.from_iterable(self._lanes.values()):
            lane.close(linger_s)
        self._lanes_rx.close()
        self._arrived.clear()
        self._context.destroy(linger=self.cfg.zmq_linger_ms)

    # ---- plumbing -------------------------------------------------------------------------------

    def _publish(self, key: str, value: str) -> None:
        self.store.set(key, seal_value(self.secret, key, value) if self.secret is not None else value)

    def _lookup(self, key: str, dst: int) -> str:
        value = self.store.get(key).decode()
        if self.secret is not None:
            try:
                value = unseal_value(self.secret, key, value)
            except Rejected as exc:
                raise ValueError(f"zmq: rank {dst}'s data address in the store is not this job's") from exc
        return value

    def _zmq_socket(self, dst: int) -> zmq.Socket:
        sock = self._push.get(dst)
        if sock is None:
            sock = self._push[dst] = self._context.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, 0)  # send() never blocks on a slow receiver
            sock.connect(self._lookup(STORE_KEY.format(rank=dst), dst))
        return sock

    def _get_lanes(self, dst: int) -> list[Lane]:
        """The lanes to ``dst``, connected now where there are none or a connection broke."""
        lanes = self._lanes.setdefault(dst, [])
        if len(lanes) == self.cfg.zmq_streams and not any(lane.broken for lane in lanes):
            return lanes
        host, port = self._lookup(LANES_KEY.format(rank=dst), dst).rsplit(" ", 1)
        hello = stripe_header(self.secret, self.rank, 0, 0, 0, 0)
        for k in range(self.cfg.zmq_streams):
            if k < len(lanes) and lanes[k].broken is None:
                continue
            lane = Lane((host, int(port)), hello, f"epd-zmq-lane-{self.rank}-{dst}-{k}")
            if k < len(lanes):
                lanes[k].close(0)
                lanes[k] = lane
            else:
                lanes.append(lane)
        return lanes

    def _tag(self, header: bytes) -> bytes:
        return mac(self.secret, b"zmq-data", header) if self.secret is not None else b""

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
            self._dropped += 1
            if self._dropped == 1:
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
