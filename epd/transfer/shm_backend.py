"""shm: same-host transfers: one POSIX shared-memory segment per send, CUDA IPC for device tensors."""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import secrets
import stat

import msgspec
import torch
import torch.distributed as dist
import zmq

from epd.launch.secret import job_id
from epd.transfer.base import TensorSpec, TransferBackend, TransferConfig, TransferHandle, as_bytes, from_bytes
from epd.transfer.cleanup import job_prefix
from epd.transfer.cuda_ipc import CudaIpcRef, IpcExporter, IpcImporter

ALIGN_BYTES = 64  # every tensor starts on a cache line of the segment, aligned for any dtype
NAME_TRIES = 8  # a new segment name that exists already is drawn again, this many times at most


class ShmPayload(msgspec.Struct, frozen=True):
    segment: str  # file name under cfg.shm_dir holding the host tensors; "" when there are none
    segment_nbytes: int
    offsets: list[int]  # byte offset of each tensor in the segment; -1: CUDA IPC or empty
    cuda: list[CudaIpcRef]  # the tensors that stayed on the sender's GPU
    ack_addr: str  # where the receiver acks CUDA refs once copied; "" when there are none


def _write_all(fd: int, data: torch.Tensor, offset: int) -> None:
    view = memoryview(data.numpy())  # data: [nbytes] uint8 on CPU
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class ShmBackend(TransferBackend):
    """Same-host data plane; construction is local (no collective, nothing in the store).

    Host tensors: the sender writes them into a new file under cfg.shm_dir (tmpfs) with
    pwrite, which costs less than faulting in a fresh mapping; the receiver maps the file,
    unlinks it at once and returns tensors that view the mapping (zero copy on CPU, one
    host-to-device copy otherwise). The sender unlinks at close() the segments nobody consumed.
    No multiprocessing.shared_memory, hence no resource_tracker warnings or early unlinks.

    CUDA tensors: CUDA IPC (see cuda_ipc.py); the receiver makes one device copy on a side
    stream and acks; both sides must call poll() for the sender to free the tensors.

    Handles may be received in any order; one source may also be this rank itself (host only).

    Names are not paths: a segment is ``<prefix>-<job id>-<rank>-<16 random hex digits>``, drawn
    again if it exists. A receiver opens only a name of that form with its own job's id, only a
    regular file of its own user and of exactly the handle's size, with offsets inside it.
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
        if not os.path.isdir(cfg.shm_dir):
            raise ValueError(f"transfer.shm_dir={cfg.shm_dir!r} does not exist (shm needs a tmpfs such as /dev/shm)")
        self._prefix = job_prefix(cfg, job_id(secret) if secret is not None else secrets.token_hex(8))
        self._name_re = re.compile(re.escape(self._prefix) + r"[0-9]{1,6}-[0-9a-f]{16}")
        self._segments: set[str] = set()  # created here, maybe not yet consumed
        self._context: zmq.Context | None = None
        self._exporter: IpcExporter | None = None
        self._importer: IpcImporter | None = None
        self._closed = False

    def send(self, dst: int, tensors: list[torch.Tensor]) -> TransferHandle:
        self._check_dst(dst)
        specs = [TensorSpec.of(t) for t in tensors]
        transfer_id = self._next_transfer_id[dst]
        offsets, host, on_gpu, segment_nbytes = [-1] * len(tensors), {}, {}, 0
        for i, (tensor, spec) in enumerate(zip(tensors, specs, strict=True)):
            if spec.nbytes == 0:
                continue
            if tensor.is_cuda:
                if dst == self.rank:
                    raise ValueError("shm cannot send CUDA tensors to its own rank (CUDA IPC is cross-process)")
                on_gpu[i] = tensor
                continue
            offsets[i] = segment_nbytes
            host[i] = as_bytes(tensor).cpu()
            segment_nbytes += -(-spec.nbytes // ALIGN_BYTES) * ALIGN_BYTES
        segment = ""
        if host:
            segment = self._write_segment(segment_nbytes, [(host[i], offsets[i]) for i in host])
        refs, ack_addr = [], ""
        if on_gpu:
            exporter = self._get_exporter()
            refs, ack_addr = exporter.export(dst, transfer_id, on_gpu), exporter.ack_addr
        payload = ShmPayload(
            segment=segment, segment_nbytes=segment_nbytes, offsets=offsets, cuda=refs, ack_addr=ack_addr
        )
        return self._new_handle(dst, specs, msgspec.msgpack.encode(payload))

    def recv(self, handle: TransferHandle) -> list[torch.Tensor]:
        self._check_handle(handle)
        payload = self._check_payload(handle)
        flat: dict[int, torch.Tensor] = {}  # index -> [nbytes] uint8
        if payload.segment:
            segment = self._map_segment(payload.segment, payload.segment_nbytes)  # [segment_nbytes] uint8
            for i, (spec, off) in enumerate(zip(handle.specs, payload.offsets, strict=True)):
                if off >= 0:
                    flat[i] = segment[off : off + spec.nbytes]
        if payload.cuda:
            if self._importer is None:
                self._importer = IpcImporter(self._get_context(), self.rank, self.device)
            flat.update(self._importer.import_copy(handle.specs, payload.cuda, payload.ack_addr, handle.transfer_id))
        outputs = []
        for i, spec in enumerate(handle.specs):
            data = flat.get(i)
            if data is None:  # empty tensor
                data = torch.empty(0, dtype=torch.uint8, device=self.device)
            outputs.append(from_bytes(data.to(self.device), spec))
        return outputs

    def _check_payload(self, handle: TransferHandle) -> ShmPayload:
        """The handle's payload, after checking every name, size and offset in it against the specs."""
        try:
            payload = msgspec.msgpack.decode(handle.payload, type=ShmPayload)
        except msgspec.DecodeError as exc:
            raise ValueError(f"malformed shm handle: {exc}") from None
        if len(payload.offsets) != len(handle.specs):
            raise ValueError("shm handle: one offset per tensor expected")
        if payload.segment and not self._name_re.fullmatch(payload.segment):
            raise ValueError(f"shm handle names a segment {payload.segment[:80]!r} that is not one of this job's")
        if not 0 <= payload.segment_nbytes <= self.cfg.max_transfer_bytes:
            raise ValueError(f"shm handle: segment size {payload.segment_nbytes} out of range")
        on_gpu = {ref.index for ref in payload.cuda}
        end = 0
        for i, (spec, off) in enumerate(zip(handle.specs, payload.offsets, strict=True)):
            if off < 0:
                if spec.nbytes and i not in on_gpu:
                    raise ValueError(f"shm handle: tensor {i} has neither an offset nor a CUDA reference")
                continue
            if not payload.segment or off % ALIGN_BYTES or off < end or off + spec.nbytes > payload.segment_nbytes:
                raise ValueError(f"shm handle: tensor {i} at offset {off} does not fit the segment")
            end = off + spec.nbytes
        if len(on_gpu) != len(payload.cuda) or not on_gpu <= set(range(len(handle.specs))):
            raise ValueError("shm handle: bad CUDA reference indices")
        return payload

    def poll(self) -> None:
        if self._exporter is not None:
            self._exporter.poll()
        if self._importer is not None:
            self._importer.poll()
        # Forget the segments their receivers consumed (unlinked).
        self._segments = {s for s in self._segments if os.path.exists(os.path.join(self.cfg.shm_dir, s))}

    @property
    def num_inflight(self) -> int:
        return len(self._segments) + (self._exporter.num_inflight if self._exporter else 0)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._importer is not None:
            self._importer.close()
        if self._exporter is not None:
            self._exporter.close()
        for segment in self._segments:
            with contextlib.suppress(FileNotFoundError):  # consumed by its receiver
                os.unlink(os.path.join(self.cfg.shm_dir, segment))
        self._segments.clear()
        if self._context is not None:
            self._context.term()

    def _write_segment(self, nbytes: int, parts: list[tuple[torch.Tensor, int]]) -> str:
        """A new segment holding ``parts`` (bytes, offset); returns its name."""
        for _ in range(NAME_TRIES):
            segment = f"{self._prefix}{self.rank}-{secrets.token_hex(8)}"
            try:
                fd = os.open(os.path.join(self.cfg.shm_dir, segment), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # someone holds this name: draw another
                continue
            break
        else:
            raise RuntimeError(f"shm: {NAME_TRIES} fresh segment names in {self.cfg.shm_dir} were all taken")
        self._segments.add(segment)
        try:
            os.ftruncate(fd, nbytes)
            for data, offset in parts:
                _write_all(fd, data, offset)
        finally:
            os.close(fd)
        return segment

    def _map_segment(self, segment: str, nbytes: int) -> torch.Tensor:
        path = os.path.join(self.cfg.shm_dir, segment)  # segment: checked against this job's name form
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_size != nbytes:
                raise ValueError(f"shm segment {segment} is not this job's (type, owner or size differ)")
            # MAP_POPULATE: map every page now, so recv() pays for it rather than the first reader
            mapping = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
        finally:
            os.close(fd)
            os.unlink(path)  # the mapping keeps the memory until the returned tensors are freed
        return torch.frombuffer(mapping, dtype=torch.uint8)

    def _get_context(self) -> zmq.Context:
        if self._context is None:
            self._context = zmq.Context()
        return self._context

    def _get_exporter(self) -> IpcExporter:
        if self._exporter is None:
            self._exporter = IpcExporter(self._get_context())
        return self._exporter
