"""CUDA IPC for the shm backend: the receiver's copies, from a sender's arena or its tensors' own memory.

Two ways a device tensor travels (the sender picks, see ``cuda_pool.py``):
- **arena** (the usual one): staged in the sender's pooled arena; the receiver keeps the arena and the
  pool's events open, so it only waits on an event and copies.
- **direct** (a transfer larger than the arena): the tensors' own caching-allocator segments are
  shared (``UntypedStorage._share_cuda_``) and opened for this transfer only: about 0.15 ms per handle
  on an H200 when the receiver can see the sender's GPU (it opens the handle there, as
  torch.multiprocessing does, at the cost of a CUDA context), ~1 ms per handle (10 ms for a 1 GiB
  segment) when it must map the memory into its own GPU through peer access.

Copies run on a side stream of the device the memory is opened on (across GPUs: a peer copy over
NVLink by that GPU's copy engine); the caller's stream waits for them with an event, never the host.
The receiver acks once its copy finished (``acks.py``), so the sender may reuse the range or free the
tensors at once.
"""

from __future__ import annotations

from collections import deque

import msgspec
import torch

from epd.transfer.acks import CUDA_PART, AckOutbox, check_ack_address
from epd.transfer.base import TensorSpec, as_bytes
from epd.transfer.cuda_pool import ArenaCache, ArenaRef, check_arena_ref, device_uuid, local_index


class CudaIpcRef(msgspec.Struct, frozen=True, array_like=True):
    """One directly shared tensor: the fields of `UntypedStorage._share_cuda_()` plus its place in it."""

    index: int  # position of the tensor in the handle's specs
    device_uuid: str  # of the sender's GPU, to find it among the importer's visible devices
    handle: bytes  # IPC handle of the caching-allocator segment holding the storage
    storage_nbytes: int
    storage_offset_bytes: int  # storage start inside that segment
    ref_counter_handle: bytes  # torch's cross-process refcount file (see torch.multiprocessing)
    ref_counter_offset: int
    event_handle: bytes  # IPC event recorded on the sender's stream when it shared the storage
    event_sync_required: bool
    byte_offset: int  # tensor start inside the storage


def share_tensors(tensors: dict[int, torch.Tensor]) -> tuple[list[CudaIpcRef], list[torch.Tensor]]:
    """Share ``tensors`` (spec index -> non-empty CUDA tensor) directly; returns their refs and the byte
    views the sender must keep alive until the receiver acks."""
    refs, held = [], []
    for index, tensor in tensors.items():
        data = as_bytes(tensor)  # [nbytes] uint8, contiguous, on the tensor's device
        (device, handle, storage_nbytes, storage_offset, rc_handle, rc_offset, event_handle, sync) = (
            data.untyped_storage()._share_cuda_()  # records an IPC event on the current stream
        )
        refs.append(
            CudaIpcRef(
                index=index,
                device_uuid=device_uuid(device),
                handle=handle,
                storage_nbytes=storage_nbytes,
                storage_offset_bytes=storage_offset,
                ref_counter_handle=rc_handle,
                ref_counter_offset=rc_offset,
                event_handle=event_handle,
                event_sync_required=sync,
                byte_offset=data.storage_offset(),
            )
        )
        held.append(data)
    return refs, held


class IpcImporter:
    """Receiver side: copy device tensors on side streams, ack each transfer once its copies are done."""

    def __init__(self, outbox: AckOutbox, device: torch.device) -> None:
        self._outbox = outbox
        self._device = device  # where the outputs go (CUDA or CPU)
        index = device.index if device.type == "cuda" else None
        self._own_index = index if index is not None else torch.cuda.current_device()
        self._streams: dict[int, torch.cuda.Stream] = {}  # copy stream per device we open memory on
        self._arenas = ArenaCache()
        # (copy done, its stream, storages to close, ack address, transfer id or -1: ack with a later entry)
        self._pending: deque[tuple[torch.cuda.Event, torch.cuda.Stream, list, str, int]] = deque()

    def copy_arena(
        self, specs: list[TensorSpec], ref: ArenaRef, ack_addr: str, transfer_id: int, out: dict | None
    ) -> dict:
        """Copy the tensors ``ref`` (an ``ArenaRef``) stages: into ``out`` (spec index -> flat uint8 view of
        a destination) when given, else into one new buffer; returns spec index -> [nbytes] uint8."""
        check_arena_ref(specs, ref)
        check_ack_address(ack_addr)
        opened = self._open_index(ref.device_uuid)
        main = torch.cuda.current_stream(self._own_index)  # the caller's stream: consumers run here
        staged = {i: (off, specs[i].nbytes) for i, off in enumerate(ref.offsets) if off >= 0}
        buffer = None
        if out is None:  # one new buffer, one copy of the whole range; the outputs view it
            buffer = torch.empty(ref.nbytes, dtype=torch.uint8, device=self._device)  # [range nbytes]
            out = {i: buffer[off : off + n] for i, (off, n) in staged.items()}
        stream = self._stream(opened, main)
        with torch.cuda.stream(stream):
            arena = self._arenas.arena(opened, ref)  # [storage_nbytes]; opened once per sender arena
            stream.wait_event(self._arenas.event(opened, ref.ready_event))  # after the staging copies
            src = arena[ref.offset : ref.offset + ref.nbytes]  # [range nbytes]
            if buffer is not None:
                buffer.copy_(src, non_blocking=True)
            else:  # into the caller's tensors, one launch for all of them
                indices = list(staged)
                sources = [src[off : off + n] for off, n in staged.values()]
                torch._foreach_copy_([out[i] for i in indices], sources, non_blocking=True)
        self._finish(main, stream, [], ack_addr, transfer_id)
        return out

    def copy_direct(
        self, specs: list[TensorSpec], refs: list[CudaIpcRef], ack_addr: str, transfer_id: int, out: dict | None
    ) -> dict:
        """Open each ref's memory for this transfer and copy its tensor; spec index -> [nbytes] uint8."""
        check_ack_address(ack_addr)
        for ref in refs:
            if ref.byte_offset < 0 or ref.byte_offset + specs[ref.index].nbytes > ref.storage_nbytes:
                raise ValueError(f"CUDA IPC reference {ref.index} does not fit its storage")
        main = torch.cuda.current_stream(self._own_index)
        if out is None:
            out = {r.index: torch.empty(specs[r.index].nbytes, dtype=torch.uint8, device=self._device) for r in refs}
        for ref in refs:
            opened = self._open_index(ref.device_uuid)
            stream = self._stream(opened, main)
            with torch.cuda.stream(stream):
                # Waits (on `stream`) for the sender's IPC event, i.e. for the tensor's producers.
                storage = torch.UntypedStorage._new_shared_cuda(
                    opened,
                    ref.handle,
                    ref.storage_nbytes,
                    ref.storage_offset_bytes,
                    ref.ref_counter_handle,
                    ref.ref_counter_offset,
                    ref.event_handle,
                    ref.event_sync_required,
                )
                nbytes = specs[ref.index].nbytes
                src = torch.empty(0, dtype=torch.uint8, device=f"cuda:{opened}").set_(storage)  # [storage_nbytes]
                out[ref.index].copy_(src[ref.byte_offset : ref.byte_offset + nbytes], non_blocking=True)
            # acked with the last ref: poll() releases in order, so every copy of the transfer is done
            self._finish(main, stream, [storage], ack_addr, transfer_id if ref is refs[-1] else -1)
        return out

    def skip_arena(self, specs: list[TensorSpec], ref: ArenaRef, ack_addr: str, transfer_id: int) -> None:
        """Ack a discarded arena transfer once its staging copies are done (the sender reuses the range)."""
        check_arena_ref(specs, ref)
        check_ack_address(ack_addr)
        opened = self._open_index(ref.device_uuid)
        stream = self._stream(opened, torch.cuda.current_stream(self._own_index))
        stream.wait_event(self._arenas.event(opened, ref.ready_event))
        done = torch.cuda.Event()
        done.record(stream)
        self._pending.append((done, stream, [], ack_addr, transfer_id))

    def ack_now(self, ack_addr: str, transfer_id: int) -> None:
        """Ack a discarded direct transfer: nothing of it was opened."""
        check_ack_address(ack_addr)
        self._outbox.send(ack_addr, transfer_id, CUDA_PART)

    def poll(self) -> None:
        """Close the mappings whose copies finished and ack their transfers."""
        while self._pending and self._pending[0][0].query():
            self._release(*self._pending.popleft())

    def close(self) -> None:
        while self._pending:
            self._pending[0][0].synchronize()
            self._release(*self._pending.popleft())
        for index, stream in self._streams.items():
            with torch.cuda.device(index), torch.cuda.stream(stream):
                self._arenas.close()

    def _open_index(self, uuid: str) -> int:
        opened = local_index(uuid)
        return self._own_index if opened is None else opened

    def _stream(self, opened: int, main: torch.cuda.Stream) -> torch.cuda.Stream:
        stream = self._streams.get(opened)
        if stream is None:
            stream = self._streams[opened] = torch.cuda.Stream(opened)
        stream.wait_stream(main)  # outputs may reuse memory that main-stream work just freed
        return stream

    def _finish(self, main, stream, storages: list, ack_addr: str, transfer_id: int) -> None:
        done = torch.cuda.Event()
        done.record(stream)
        main.wait_event(done)  # consumers on the caller's stream see the copied data
        self._pending.append((done, stream, storages, ack_addr, transfer_id))

    def _release(self, done, stream, storages: list, ack_addr: str, transfer_id: int) -> None:
        # An IPC storage's deleter synchronizes the *current* stream of its device: free it with
        # the copy stream current (its copy is done) so the owner's queued work is never waited on.
        with torch.cuda.stream(stream):
            storages.clear()
        if transfer_id >= 0:
            self._outbox.send(ack_addr, transfer_id, CUDA_PART)
