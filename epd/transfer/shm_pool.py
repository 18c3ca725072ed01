"""Pooled shm segments: a sender keeps its segments to each peer mapped and reuses them; a receiver maps
each segment once, after checking it, and keeps the mapping.

A segment is a file ``<prefix>-<job id>-<sender rank>-<16 random hex digits>`` in ``transfer.shm_dir``.
The receiver unlinks it as soon as it has mapped it (both ends keep their mappings), so however either
process ends, nothing is left behind once the receiver has seen the segment; the sender unlinks what
no receiver saw at close(), and the launcher removes whatever a killed rank left of the job's prefix.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import mmap
import os
import re
import secrets
import stat
from collections import OrderedDict
from dataclasses import dataclass

import torch

from epd.transfer.base import round_up

log = logging.getLogger("epd.transfer")

SEGMENT_MIN_BYTES = 16 << 20  # a pool's first segment; later ones double (pages are touched only when used)
NAME_TRIES = 8  # a new segment name that exists already is drawn again, this many times at most
MAX_MAPPED_SEGMENTS = 256  # a receiver's mappings of pooled segments; more means a peer misbehaves


class RangeAllocator:
    """First-fit allocation of aligned byte ranges of ``[0, capacity)``; freed ranges coalesce."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free: list[tuple[int, int]] = [(0, capacity)] if capacity else []  # (start, size), sorted

    def alloc(self, nbytes: int) -> int | None:
        """Start of a free range of at least ``nbytes``, now taken; None when none is large enough."""
        size = round_up(max(nbytes, 1))
        for k, (start, avail) in enumerate(self._free):
            if avail >= size:
                self._free[k : k + 1] = [(start + size, avail - size)] if avail > size else []
                return start
        return None

    def free(self, start: int, nbytes: int) -> None:
        """Give back the range ``alloc(nbytes)`` returned at ``start``."""
        size = round_up(max(nbytes, 1))
        k = bisect.bisect(self._free, (start, 0))
        assert (k == 0 or sum(self._free[k - 1]) <= start) and (
            k == len(self._free) or start + size <= self._free[k][0]
        ), "freed a range that is free"
        if k < len(self._free) and start + size == self._free[k][0]:  # merge with the next
            size += self._free.pop(k)[1]
        if k > 0 and sum(self._free[k - 1]) == start:  # and with the previous
            start, size = self._free[k - 1][0], self._free[k - 1][1] + size
            k -= 1
            self._free.pop(k)
        self._free.insert(k, (start, size))

    @property
    def free_bytes(self) -> int:
        return sum(size for _, size in self._free)


@dataclass
class HostSlot:
    """A range of one segment holding one transfer's host tensors."""

    segment: str  # file name under shm_dir
    segment_nbytes: int
    offset: int  # start of the range in the segment
    nbytes: int
    data: torch.Tensor  # [nbytes] uint8 view of the sender's mapping
    pooled: bool  # False: a segment of its own, used once


class _Segment:
    def __init__(self, name: str, nbytes: int, mapping: mmap.mmap) -> None:
        self.name = name
        self.nbytes = nbytes
        self.data = torch.frombuffer(mapping, dtype=torch.uint8)  # [nbytes]; keeps the mapping alive
        self.ranges = RangeAllocator(nbytes)


class HostPool:
    """Sender side: the segments of one (sender, receiver) pair, at most ``cap_bytes`` of them."""

    def __init__(self, shm_dir: str, name_prefix: str, cap_bytes: int) -> None:
        self.shm_dir = shm_dir
        self.name_prefix = name_prefix  # "<prefix>-<job id>-<rank>-"
        self.cap_bytes = cap_bytes
        self._segments: list[_Segment] = []
        self._created: list[str] = []  # every file made here (the receiver may have unlinked it already)

    def alloc(self, nbytes: int) -> HostSlot:
        """A range of ``nbytes`` in a pooled segment, or in a segment of its own when the pool is full."""
        for seg in self._segments:
            offset = seg.ranges.alloc(nbytes)
            if offset is not None:
                return HostSlot(seg.name, seg.nbytes, offset, nbytes, seg.data[offset : offset + nbytes], True)
        pooled = sum(s.nbytes for s in self._segments)
        size = max(
            SEGMENT_MIN_BYTES, 1 << (nbytes - 1).bit_length(), 2 * (self._segments[-1].nbytes if self._segments else 0)
        )
        size = min(size, self.cap_bytes - pooled)
        if size >= nbytes:
            name, mapping = self._create(size)
            seg = _Segment(name, size, mapping)
            self._segments.append(seg)
            offset = seg.ranges.alloc(nbytes)
            assert offset == 0
            return HostSlot(name, size, 0, nbytes, seg.data[:nbytes], True)
        name, mapping = self._create(nbytes)
        return HostSlot(name, nbytes, 0, nbytes, torch.frombuffer(mapping, dtype=torch.uint8), False)

    def free(self, slot: HostSlot) -> None:
        """The receiver is done with ``slot``: its range may hold another transfer."""
        if slot.pooled:
            seg = next(s for s in self._segments if s.name == slot.segment)
            seg.ranges.free(slot.offset, slot.nbytes)

    def close(self) -> None:
        """Unlink the segments no receiver mapped; mappings go with the last view of them."""
        for name in self._created:
            with contextlib.suppress(FileNotFoundError):  # mapped (and unlinked) by its receiver
                os.unlink(os.path.join(self.shm_dir, name))
        self._created.clear()
        self._segments.clear()

    def _create(self, nbytes: int) -> tuple[str, mmap.mmap]:
        for _ in range(NAME_TRIES):
            name = f"{self.name_prefix}{secrets.token_hex(8)}"
            path = os.path.join(self.shm_dir, name)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            except FileExistsError:  # someone holds this name: draw another
                continue
            break
        else:
            raise RuntimeError(f"shm: {NAME_TRIES} fresh segment names in {self.shm_dir} were all taken")
        self._created.append(name)
        try:
            os.ftruncate(fd, nbytes)
            return name, mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED)
        finally:
            os.close(fd)


class SegmentMaps:
    """Receiver side: every segment a handle names is opened, checked and unlinked once; pooled ones
    stay mapped for the next handles that name them."""

    def __init__(self, shm_dir: str, job_prefix: str, any_job: bool = False) -> None:
        """``job_prefix``: ``<prefix>-<job id>-``; ``any_job``: accept any job id (no job secret, as in
        benchmarks: each rank then draws its own id)."""
        self.shm_dir = shm_dir
        head = re.escape(job_prefix.rsplit("-", 2)[0]) + "-[0-9a-f]{16}-" if any_job else re.escape(job_prefix)
        self._name_re = re.compile(head + r"([0-9]{1,6})-[0-9a-f]{16}")
        self._maps: OrderedDict[str, mmap.mmap] = OrderedDict()

    def check_name(self, segment: str, src: int) -> None:
        """``ValueError`` unless ``segment`` is a segment name of this job made by rank ``src``."""
        match = self._name_re.fullmatch(segment)
        if match is None or int(match.group(1)) != src:
            raise ValueError(f"shm handle names a segment {segment[:80]!r} that is not one of rank {src}'s of this job")

    def get(self, segment: str, nbytes: int, pooled: bool) -> mmap.mmap:
        """The mapping of ``segment`` (a name ``check_name`` accepted), which must hold ``nbytes``."""
        mapping = self._maps.get(segment)
        if mapping is not None:
            if len(mapping) != nbytes:
                raise ValueError(f"shm handle: segment {segment} holds {len(mapping)} bytes, not {nbytes}")
            self._maps.move_to_end(segment)
            return mapping
        mapping = self._open(segment, nbytes, populate=not pooled)
        if pooled:
            self._maps[segment] = mapping
            if len(self._maps) > MAX_MAPPED_SEGMENTS:  # views of it stay valid; a later handle naming it fails
                old, _ = self._maps.popitem(last=False)
                log.warning("shm: over %d pooled segments mapped; forgot %s", MAX_MAPPED_SEGMENTS, old)
        return mapping

    def close(self) -> None:
        self._maps.clear()  # each mapping goes with the last tensor viewing it

    def _open(self, segment: str, nbytes: int, populate: bool) -> mmap.mmap:
        path = os.path.join(self.shm_dir, segment)  # segment: checked against this job's name form
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_size != nbytes:
                raise ValueError(f"shm segment {segment} is not this job's (type, owner or size differ)")
            # MAP_POPULATE for a segment used once: map every page now, so recv() pays rather than the
            # first reader; a pooled segment's pages are mapped on first use and then stay
            flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
            mapping = mmap.mmap(fd, nbytes, flags=flags)
        finally:
            os.close(fd)
            os.unlink(path)  # both ends keep their mappings; nothing is left if either dies
        return mapping
