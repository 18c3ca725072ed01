"""The two ranks of ``python -m epd.bench.transfer``: rank 0 sends items, rank 1 receives them as a
language rank does, and measures.

One round = one item as ranks move it: rank 0 takes t0 (its device idle), calls ``send()`` and ships the
handle in a sealed ``ItemReady`` over the real control plane (``epd.protocol.channel``, job secret); rank
1 parks it, turns its loop (inbox poll, ``ready()``, ``poll()``) until the data is there, calls
``recv()``, synchronises its device and reads t1 (CLOCK_MONOTONIC, shared by the host's processes), then
checks every byte and answers. Rounds run one at a time and rotate through three payloads, so stale
bytes left in a reused buffer cannot pass the check.
"""

from __future__ import annotations

import os
import statistics
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from epd.protocol import Heartbeat, ItemReady
from epd.protocol.channel import Channel
from epd.transfer import TransferConfig, as_bytes, build_transfer

ROLES = {"rank0": "encoder", "rank1": "language"}
PAYLOADS = 3  # distinct payloads per size, rotated through


def devices(device: str) -> list[torch.device]:
    """The two ranks' devices: CPU, or GPUs 0 and 1 (both on GPU 0 when there is one)."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return [torch.device("cpu")] * 2
    count = torch.cuda.device_count()
    return [torch.device("cuda", rank % count) for rank in range(2)]


def item(nbytes: int, seed: int, device: torch.device) -> list[torch.Tensor]:
    """An image item of ``nbytes`` of embeddings: [embeds (bf16), grid_thw [1, 3] (int64)], random bits."""
    gen = torch.Generator(device).manual_seed(seed)
    raw = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=device, generator=gen)
    grid = torch.tensor([[1, seed, nbytes]], dtype=torch.int64, device=device)
    return [raw.view(torch.bfloat16), grid]  # embeds: [nbytes / 2]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_floor_s(nbytes: int, device: torch.device, iters: int) -> float:
    """Median seconds of a same-process copy of ``nbytes`` (host memcpy, or device-to-device)."""
    src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src).fill_(0)  # pages touched: the copy alone is timed
    times = []
    for _ in range(iters + 1):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


class Bench:
    """One rank's side of the measurements, for every backend in turn."""

    def __init__(self, rank: int, args: dict[str, str], port: int) -> None:
        self.rank = rank
        self.args = args
        self.devices = devices(args["device"])
        self.device = self.devices[rank]
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.cross_gpu = self.device.type == "cuda" and self.devices[0] != self.devices[1]
        self.iters, self.warmup = int(args["iters"]), int(args["warmup"])
        self.store = dist.TCPStore("127.0.0.1", port, 2, rank == 0, timeout=timedelta(minutes=5))
        pg = "cpu:gloo,cuda:nccl" if self.device.type == "cuda" else "gloo"
        dist.init_process_group(pg, store=dist.PrefixStore("pg", self.store), rank=rank, world_size=2)
        self.secret = bytes.fromhex(os.environ["EPD_BENCH_SECRET"])
        self.channel = Channel(f"rank{rank}", dist.PrefixStore("ch", self.store), self.secret, ROLES)
        self.peer = f"rank{1 - rank}"
        self.transfer = None
        self._beats = 0  # answers of the peer received and not yet waited for

    def run(self, backend: str, sizes: list[int]) -> dict:
        """Rank 1 returns {"control": s, "rows": [(nbytes, s, floor s, floor name)], ...}; rank 0 {}."""
        options = {"zmq_stream_min_bytes": int(self.args["stream_min"])} if self.args["stream_min"] else {}
        name, _, variant = backend.partition(":")
        if variant == "direct":  # shm without its device arena: every transfer opens IPC handles (the old path)
            options["shm_cuda_pool_bytes"] = 0
        cfg = TransferConfig(backend=name, zmq_streams=int(self.args["streams"]), **options)
        store = dist.PrefixStore(f"epd-{backend}", self.store)
        self.transfer = build_transfer(cfg, self.rank, 2, self.device, store, self.secret, "127.0.0.1")
        result: dict = {"backend": backend, "rows": []}
        result["control"] = self._rounds(0, data=False)
        for nbytes in sizes:
            floor_s, floor = self._floor(backend, nbytes)
            t = self._rounds(nbytes, data=True)
            result["rows"].append((nbytes, t, floor_s, floor))
            if self.rank == 1:
                print(f"epd.bench.transfer: {backend} {nbytes} B measured", flush=True)
        self.transfer.close()
        dist.barrier()
        return result if self.rank == 1 else {}

    def close(self) -> None:
        self.channel.close()
        dist.destroy_process_group()

    # ---- floors ---------------------------------------------------------------------------------

    def _floor(self, backend: str, nbytes: int) -> tuple[float, str]:
        """The link's own limit for ``nbytes``, measured now by rank 1 (rank 0 waits: no contention)."""
        if self.cross_gpu and not backend.startswith("zmq"):
            return self._rounds(nbytes, data=True, plain=True), "NCCL send/recv (+ control)"
        floor_s = 0.0
        on_host = backend.startswith("zmq") or self.device.type == "cpu"
        if self.rank == 1:
            floor_s = copy_floor_s(nbytes, torch.device("cpu") if on_host else self.device, self.iters)
        dist.barrier()
        return floor_s, "host memcpy" if on_host else "device copy"

    # ---- rounds ---------------------------------------------------------------------------------

    def _rounds(self, nbytes: int, data: bool, plain: bool = False) -> float:
        """Median seconds of one round (rank 1's measurement; rank 0 returns 0)."""
        payloads = [item(nbytes, 1000 * nbytes + k, self.device) for k in range(PAYLOADS)] if data else []
        times = []
        for i in range(self.warmup + self.iters):
            tensors = payloads[i % PAYLOADS] if data else []
            if self.rank == 0:
                self._send_round(i, tensors, data, plain)
            else:
                times.append(self._recv_round(tensors, data, plain))
        return statistics.median(times[self.warmup :]) if times else 0.0

    def _send_round(self, i: int, tensors: list[torch.Tensor], data: bool, plain: bool) -> None:
        if plain:
            self._wait_peer()  # the receiver has posted its recv
        _sync(self.device)
        t0 = time.perf_counter()
        handle = self.transfer.send(1, tensors) if data and not plain else None
        msg = ItemReady(request_id="bench", index=i, modality="image", handle=handle, timestamps={"t0": t0})
        self.channel.send(self.peer, msg)
        if plain:
            dist.send(tensors[0].view(torch.uint8), 1)
        self._wait_peer()

    def _recv_round(self, expected: list[torch.Tensor], data: bool, plain: bool) -> float:
        if plain:
            scratch = torch.empty_like(expected[0].view(torch.uint8))
            self.channel.send(self.peer, Heartbeat())
        msg = self._wait_item()
        received = []
        if plain:
            dist.recv(scratch, 0)
            received = [scratch.view(expected[0].dtype), expected[1]]
        elif msg.handle is not None:
            while not self.transfer.ready(msg.handle):  # the rank's loop turns until the data is here
                self.channel.recv(0)
                self.transfer.poll()
            received = self.transfer.recv(msg.handle)
        _sync(self.device)
        elapsed = time.perf_counter() - msg.timestamps["t0"]
        if data and not all(torch.equal(as_bytes(a), as_bytes(b)) for a, b in zip(received, expected, strict=True)):
            raise RuntimeError(f"a transfer of {expected[0].nbytes} B corrupted data")
        del received
        self.transfer.poll()
        self.channel.send(self.peer, Heartbeat())
        return elapsed

    def _wait_item(self) -> ItemReady:
        while True:
            for _, msg in self.channel.recv(1000):
                if isinstance(msg, ItemReady):
                    return msg

    def _wait_peer(self) -> None:
        """Until the peer's next answer (a Heartbeat), polling the data plane meanwhile (acks come in)."""
        while not self._beats:
            got = self.channel.recv(1)  # returns as soon as a message is in
            self.transfer.poll()
            self._beats += sum(isinstance(msg, Heartbeat) for _, msg in got)
        self._beats -= 1
