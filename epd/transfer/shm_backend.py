"""shm: same-host transfers through pooled POSIX shared memory (host tensors) and pooled CUDA IPC."""

from __future__ import annotations

import functools
import os
import secrets
import weakref
from collections import deque
from dataclasses import dataclass, field

import msgspec
import numpy as np
import torch
import torch.distributed as dist
import zmq

from epd.launch.secret import job_id
from epd.transfer.acks import CUDA_PART, HOST_PART, Ack, AckInbox, AckOutbox, check_ack_address
from epd.transfer.base import (
    ALIGN_BYTES,
    TensorSpec,
    TransferBackend,
    TransferConfig,
    TransferHandle,
    aligned_offsets,
    as_bytes,
    check_out,
    from_bytes,
)
from epd.transfer.cleanup import job_prefix
from epd.transfer.cuda_ipc import CudaIpcRef, IpcImporter, share_tensors
from epd.transfer.cuda_pool import ArenaRef, ArenaSlot, DeviceArena
from epd.transfer.shm_pool import HostPool, HostSlot, SegmentMaps


class ShmPayload(msgspec.Struct, frozen=True):
    segment: str  # file name under cfg.shm_dir holding the host tensors; "" when there are none
    segment_nbytes: int
    offsets: list[int]  # byte offset of each host tensor in the segment; -1: on a GPU or empty
    cuda: list[CudaIpcRef]  # device tensors shared directly (too large for the sender's arena)
    ack_addr: str  # where the receiver acks each part once done with it; "" when nothing needs an ack
    pooled: bool = False  # the segment serves many transfers: the receiver keeps it mapped
    arena: ArenaRef | None = None  # device tensors staged in the sender's arena


@dataclass
class _Held:
    """Sender side: what one transfer holds until its receiver acks each part."""

    host: HostSlot | None = None
    arena: ArenaSlot | None = None
    tensors: list[torch.Tensor] = field(default_factory=list)  # shared directly

    @property
    def empty(self) -> bool:
        return self.host is None and self.arena is None and not self.tensors


class ShmBackend(TransferBackend):
    """Same-host data plane; construction is local (no collective, nothing in the store).

    Host tensors: the sender copies them into a range of a shm segment it keeps for that receiver
    (``shm_pool.py``); the receiver maps each segment once, unlinks it, and keeps the mapping. On a CPU
    receiver the tensors view the range (zero copy) and the range goes back to the sender's pool when
    the last of them is freed; on a GPU receiver they are copied to the device at once.

    CUDA tensors: staged in the sender's device arena, whose memory and events the receiver opens once
    (``cuda_pool.py``); transfers larger than the arena share the tensors' own memory (``cuda_ipc.py``).
    The receiver copies on a side stream and the caller's stream waits on an event, never the host.

    The receiver acks each part once done with it (``acks.py``); both sides must call poll(). Handles
    may be received in any order; one source may also be this rank itself (host only).

    Names are not paths: a segment is ``<prefix>-<job id>-<rank>-<16 random hex digits>``, drawn again
    if it exists. A receiver opens only a name of that form with its own job's id and the handle's
    sender rank, only a regular file of its own user and of exactly the handle's size, with offsets
    inside it; a pooled segment is checked when first opened, and later handles may only name ranges
    inside the mapping then made.
    """

    name = "shm"

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
        if self.device.type == "cuda" and self.device.index is None:  # the arena takes tensors of one device
            self.device = torch.device("cuda", torch.cuda.current_device())
        if not os.path.isdir(cfg.shm_dir):
            raise ValueError(f"transfer.shm_dir={cfg.shm_dir!r} does not exist (shm needs a tmpfs such as /dev/shm)")
        self._prefix = job_prefix(cfg, job_id(secret) if secret is not None else secrets.token_hex(8))
        self._maps = SegmentMaps(cfg.shm_dir, self._prefix, any_job=secret is None)
        self._pools: dict[int, HostPool] = {}  # per destination
        self._arena: DeviceArena | None = None
        self._held: dict[tuple[int, int], _Held] = {}  # (dst, transfer id) -> what it holds
        self._context = zmq.Context()
        self._inbox: AckInbox | None = None
        self._outbox = AckOutbox(self._context, rank, secret)
        self._importer: IpcImporter | None = None
        self._released: deque[tuple[str, int]] = deque()  # host parts done with: (ack address, transfer id)
        self._closed = False

    # ---- sending --------------------------------------------------------------------------------

    def send(self, dst: int, tensors: list[torch.Tensor]) -> TransferHandle:
        self._check_dst(dst)
        specs = [TensorSpec.of(t) for t in tensors]
        transfer_id = self._next_transfer_id[dst]
        host = {i: t for i, (t, s) in enumerate(zip(tensors, specs, strict=True)) if s.nbytes and not t.is_cuda}
        on_gpu = {i: t for i, (t, s) in enumerate(zip(tensors, specs, strict=True)) if s.nbytes and t.is_cuda}
        if on_gpu and dst == self.rank:
            raise ValueError("shm cannot send CUDA tensors to its own rank (CUDA IPC is cross-process)")
        held, offsets, refs, arena_ref = _Held(), [-1] * len(specs), [], None
        try:
            if host:
                held.host = self._stage_host(dst, host, offsets)
            if on_gpu:
                staged = self._stage_arena(dst, on_gpu, len(specs))
                if staged is not None:
                    arena_ref, held.arena = staged
                else:
                    refs, held.tensors = share_tensors(on_gpu)
        except BaseException:
            self._release(dst, held, (HOST_PART, CUDA_PART))
            raise
        ack_addr = ""
        if not held.empty:
            ack_addr = self._get_inbox().address
            self._held[(dst, transfer_id)] = held
        slot = held.host
        payload = ShmPayload(
            segment=slot.segment if slot else "",
            segment_nbytes=slot.segment_nbytes if slot else 0,
            offsets=offsets,
            cuda=refs,
            ack_addr=ack_addr,
            pooled=bool(slot and slot.pooled),
            arena=arena_ref,
        )
        return self._new_handle(dst, specs, msgspec.msgpack.encode(payload))

    def _stage_host(self, dst: int, host: dict[int, torch.Tensor], offsets: list[int]) -> HostSlot:
        data = {i: as_bytes(t) for i, t in host.items()}  # each [nbytes] uint8 on CPU
        rel, total = aligned_offsets([d.numel() for d in data.values()])
        pool = self._pools.get(dst)
        if pool is None:
            pool = self._pools[dst] = HostPool(self.cfg.shm_dir, f"{self._prefix}{self.rank}-", self.cfg.shm_pool_bytes)
        slot = pool.alloc(total)
        for (i, d), start in zip(data.items(), rel, strict=True):
            slot.data[start : start + d.numel()].copy_(d)
            offsets[i] = slot.offset + start
        return slot

    def _stage_arena(self, dst: int, on_gpu: dict[int, torch.Tensor], num_specs: int):
        if not self.cfg.shm_cuda_pool_bytes or any(t.device != self.device for t in on_gpu.values()):
            return None
        if self._arena is None:
            self._arena = DeviceArena(self.device, self.cfg.shm_cuda_pool_bytes)
        return self._arena.stage(dst, on_gpu, num_specs)

    # ---- receiving ------------------------------------------------------------------------------

    def recv(self, handle: TransferHandle) -> list[torch.Tensor]:
        flat = self._receive(handle, None)
        empty = torch.empty(0, dtype=torch.uint8, device=self.device)
        return [from_bytes(flat.get(i, empty), spec) for i, spec in enumerate(handle.specs)]

    def recv_into(self, handle: TransferHandle, out: list[torch.Tensor]) -> None:
        check_out(handle.specs, out)
        self._receive(handle, {i: as_bytes(t) for i, t in enumerate(out)})  # views: written in place

    def _receive(self, handle: TransferHandle, dest: dict[int, torch.Tensor] | None) -> dict[int, torch.Tensor]:
        """Spec index -> [nbytes] uint8 of every non-empty tensor (``dest``'s entries when given)."""
        self._check_handle(handle)
        payload = self._check_payload(handle)
        flat: dict[int, torch.Tensor] = {}
        if payload.segment:
            flat.update(self._receive_host(handle, payload, dest))
        if payload.arena is not None or payload.cuda:
            importer = self._get_importer()
            on_gpu = None if dest is None else {i: dest[i] for i, o in enumerate(payload.offsets) if o < 0}
            if payload.arena is not None:
                flat.update(
                    importer.copy_arena(handle.specs, payload.arena, payload.ack_addr, handle.transfer_id, on_gpu)
                )
            else:
                flat.update(
                    importer.copy_direct(handle.specs, payload.cuda, payload.ack_addr, handle.transfer_id, on_gpu)
                )
        return flat

    def _receive_host(self, handle: TransferHandle, payload: ShmPayload, dest: dict | None) -> dict[int, torch.Tensor]:
        mapping = self._maps.get(payload.segment, payload.segment_nbytes, payload.pooled)
        placed = [(i, off, handle.specs[i].nbytes) for i, off in enumerate(payload.offsets) if off >= 0]
        lo, hi = placed[0][1], max(off + n for _, off, n in placed)
        release = functools.partial(self._released.append, (payload.ack_addr, handle.transfer_id))
        if dest is None and self.device.type == "cpu":
            # zero copy: the outputs view the sender's range, which returns to its pool with the last of them
            view = np.frombuffer(mapping, dtype=np.uint8, count=hi - lo, offset=lo)
            weakref.finalize(view, release)
            data = torch.frombuffer(view, dtype=torch.uint8)  # [hi - lo]; keeps `view` alive
            return {i: data[off - lo : off - lo + n] for i, off, n in placed}
        data = torch.frombuffer(mapping, dtype=torch.uint8, count=hi - lo, offset=lo)  # [hi - lo]
        out = {}
        for i, off, n in placed:  # from pageable memory: synchronous, so the range is free right after
            if dest is not None:
                dest[i].copy_(data[off - lo : off - lo + n])
            else:
                out[i] = data[off - lo : off - lo + n].to(self.device)
        del data
        release()
        return out if dest is None else {i: dest[i] for i, _, _ in placed}

    def discard(self, handle: TransferHandle) -> None:
        self._check_handle(handle)
        payload = self._check_payload(handle)
        if payload.segment:  # mapped all the same: it is unlinked then, and a pooled one serves later handles
            self._maps.get(payload.segment, payload.segment_nbytes, payload.pooled)
            self._released.append((payload.ack_addr, handle.transfer_id))
        if payload.arena is not None:
            self._get_importer().skip_arena(handle.specs, payload.arena, payload.ack_addr, handle.transfer_id)
        elif payload.cuda:
            self._get_importer().ack_now(payload.ack_addr, handle.transfer_id)

    def _check_payload(self, handle: TransferHandle) -> ShmPayload:
        """The handle's payload, after checking every name, size and offset in it against the specs."""
        try:
            payload = msgspec.msgpack.decode(handle.payload, type=ShmPayload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ValueError(f"malformed shm handle: {exc}") from None
        if len(payload.offsets) != len(handle.specs):
            raise ValueError("shm handle: one offset per tensor expected")
        if payload.segment:
            self._maps.check_name(payload.segment, handle.src)
        if not 0 <= payload.segment_nbytes <= self.cfg.max_transfer_bytes:
            raise ValueError(f"shm handle: segment size {payload.segment_nbytes} out of range")
        on_gpu = {ref.index for ref in payload.cuda}
        if payload.arena is not None:
            on_gpu |= {i for i, off in enumerate(payload.arena.offsets) if off >= 0}
        end = 0
        for i, (spec, off) in enumerate(zip(handle.specs, payload.offsets, strict=True)):
            if off < 0:
                if spec.nbytes and i not in on_gpu:
                    raise ValueError(f"shm handle: tensor {i} has neither an offset nor a CUDA reference")
                continue
            if not payload.segment or off % ALIGN_BYTES or off < end or off + spec.nbytes > payload.segment_nbytes:
                raise ValueError(f"shm handle: tensor {i} at offset {off} does not fit the segment")
            if not spec.nbytes or i in on_gpu:
                raise ValueError(f"shm handle: tensor {i} is placed twice or is empty")
            end = off + spec.nbytes
        if payload.segment and end == 0:
            raise ValueError("shm handle: a segment without tensors")
        if payload.arena is not None and payload.cuda:
            raise ValueError("shm handle: device tensors both staged and shared")
        if len({r.index for r in payload.cuda}) != len(payload.cuda) or not {r.index for r in payload.cuda} <= set(
            range(len(handle.specs))
        ):
            raise ValueError("shm handle: bad CUDA reference indices")
        if payload.segment or payload.cuda or payload.arena is not None:
            check_ack_address(payload.ack_addr)
        return payload

    # ---- progress and lifetime ------------------------------------------------------------------

    def poll(self) -> None:
        if self._inbox is not None:
            for ack in self._inbox.drain():
                self._on_ack(ack)
        if self._importer is not None:
            self._importer.poll()
        while self._released:
            address, transfer_id = self._released.popleft()
            self._outbox.send(address, transfer_id, HOST_PART)

    @property
    def num_inflight(self) -> int:
        """Transfers some part of which a receiver has not acked yet (pool ranges or tensors held)."""
        return len(self._held)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._importer is not None:
            self._importer.close()  # waits for its copies, acks them
        self.poll()
        self._outbox.close()
        if self._inbox is not None:
            self._inbox.close()
        for pool in self._pools.values():
            pool.close()
        if self._arena is not None:
            self._arena.close()
        self._held.clear()
        self._maps.close()
        self._context.term()

    def _on_ack(self, ack: Ack) -> None:
        held = self._held.get((ack.receiver, ack.transfer_id))
        if held is None:
            return  # a repeated ack, or one for a transfer never sent
        self._release(ack.receiver, held, (ack.part,))
        if held.empty:
            del self._held[(ack.receiver, ack.transfer_id)]

    def _release(self, dst: int, held: _Held, parts: tuple[int, ...]) -> None:
        if HOST_PART in parts and held.host is not None:
            self._pools[dst].free(held.host)
            held.host = None
        if CUDA_PART in parts:
            if held.arena is not None:
                self._arena.release(held.arena)
                held.arena = None
            held.tensors.clear()

    def _get_inbox(self) -> AckInbox:
        if self._inbox is None:
            self._inbox = AckInbox(self._context, self.secret)
        return self._inbox

    def _get_importer(self) -> IpcImporter:
        if self._importer is None:
            self._importer = IpcImporter(self._outbox, self.device)
        return self._importer
