"""KV-cache transfer from a prefill to a decode instance, per backend, against the link's limit.

    python -m epd.bench.kv transfer=shm,zmq tokens=8192 iters=10 [device=auto|cpu|cuda] [layers=28]

Two ranks on this host, each with a paged KV cache of the Qwen2.5-7B language model's shape (28 layers,
4 KV heads of 128, blocks of 16 tokens; bf16 on GPU, float32 on CPU). Rank 0 does what a prefill
instance does with a finished request (``ModelRunner.gather_kv``: copy its blocks out of the cache, in
a scattered order, then ``send``); rank 1 what a decode instance does (``recv``, then ``write_kv`` into
blocks of its own cache). Each transfer is timed end to end, from before the gather on rank 0 to the
blocks written on rank 1 (CLOCK_MONOTONIC, shared by the host's processes); the handle crosses a ZMQ
socket inside that window, as it does in epd.

The reference, measured in the same run: the same bytes copied once on the device (one GPU: a
device-to-device copy; CPU: a memcpy). ratio = reference time / transfer time (1.0 = at the limit;
the gather and the write are two more copies, so a perfect pipeline sits near 1/3 on one device).
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import time
from datetime import timedelta

import msgspec
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import zmq

from epd.transfer import TransferConfig, TransferHandle, build_transfer

DEFAULTS = {"transfer": "shm", "tokens": "8192", "iters": "10", "warmup": "2", "device": "auto", "layers": "28"}
KV_HEADS, HEAD_DIM, BLOCK = 4, 128, 16


def parse_args(argv: list[str]) -> dict[str, str]:
    if {"-h", "--help"} & set(argv):
        options = "\n".join(f"  {k}=VALUE (default {v})" for k, v in DEFAULTS.items())
        print(f"usage: python -m epd.bench.kv [key=value ...]\n{__doc__}\noptions:\n{options}")
        raise SystemExit(0)
    args = dict(DEFAULTS)
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.removeprefix("transfer.backend").replace("transfer.", "") or "transfer"
        if not sep or key not in DEFAULTS:
            raise SystemExit(f"bad argument {arg!r}; known keys: {', '.join(DEFAULTS)} (see --help)")
        args[key] = value
    for backend in args["transfer"].split(","):  # an unknown backend fails before spawning
        try:
            TransferConfig(backend=backend)
        except ValueError as exc:
            raise SystemExit(f"epd.bench.kv: {exc}") from None
    return args


def _device(name: str, rank: int) -> torch.device:
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    torch.cuda.set_device(rank % torch.cuda.device_count())
    return torch.device("cuda", rank % torch.cuda.device_count())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cache(layers: int, tokens: int, device: torch.device) -> torch.Tensor:
    """[L, 2, blocks, 16, 4, 128]: room for two requests of ``tokens``, shuffled blocks in use."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    blocks = 2 * (-(-tokens // BLOCK)) + 1
    return torch.randn(layers, 2, blocks, BLOCK, KV_HEADS, HEAD_DIM, device=device).to(dtype)


class Ship(msgspec.Struct, array_like=True):
    t0_ns: int
    handle: TransferHandle


def _rank_main(rank: int, args: dict[str, str], port: int, secret: bytes) -> None:
    device = _device(args["device"], rank)
    store = dist.TCPStore("127.0.0.1", port, 2, rank == 0, timeout=timedelta(minutes=5))
    dist.init_process_group(
        "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo", store=store, rank=rank, world_size=2
    )
    transfer = build_transfer(TransferConfig(backend=args["transfer"]), rank, 2, device, store, secret, "127.0.0.1")
    layers, tokens = int(args["layers"]), int(args["tokens"])
    cache = _cache(layers, tokens, device)
    num_blocks = -(-tokens // BLOCK)
    table = torch.randperm(cache.shape[2] - 1, device=device)[:num_blocks] + 1  # the request's blocks, scattered
    ctx = zmq.Context()
    n = int(args["warmup"]) + int(args["iters"])
    if rank == 0:
        sock = ctx.socket(zmq.PUSH)
        sock.connect(store.get("bench/kv/addr").decode())
        for _ in range(n):
            _sync(device)
            t0 = time.monotonic_ns()
            kv = cache.index_select(2, table)  # as ModelRunner.gather_kv
            handle = transfer.send(1, [kv])
            sock.send(msgspec.msgpack.encode(Ship(t0, handle)))
            while transfer.num_inflight:
                transfer.poll()
        store.wait(["bench/kv/finished"])
    else:
        sock = ctx.socket(zmq.PULL)
        sock_port = sock.bind_to_random_port("tcp://127.0.0.1")
        store.set("bench/kv/addr", f"tcp://127.0.0.1:{sock_port}")
        times = []
        for i in range(n):
            ship = msgspec.msgpack.decode(sock.recv(), type=Ship)
            while not transfer.ready(ship.handle):
                transfer.poll()
            (kv,) = transfer.recv(ship.handle)
            cache.index_copy_(2, table, kv.to(cache.dtype))  # as ModelRunner.write_kv
            _sync(device)
            del kv  # a shm view on the host: dropping it releases the segment, which the sender waits for
            transfer.poll()
            if i >= int(args["warmup"]):
                times.append((time.monotonic_ns() - ship.t0_ns) / 1e9)
        nbytes = num_blocks * cache[:, :, 0].numel() * cache.element_size()
        reference = _reference_s(nbytes, device)
        _report(args, device, nbytes, statistics.median(times), reference)
        store.set("bench/kv/finished", "1")
    transfer.close()
    ctx.destroy(linger=0)
    dist.destroy_process_group()


def _reference_s(nbytes: int, device: torch.device, iters: int = 10) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        dst.copy_(src)
    _sync(device)
    return (time.perf_counter() - t0) / iters


def _report(args, device: torch.device, nbytes: int, seconds: float, reference: float) -> None:
    label = "" if device.type == "cuda" else " (CPU: float32, for a smoke test of the path, not a GPU figure)"
    print(f"KV transfer of {args['tokens']} tokens, {int(args['layers'])} layers x 4 KV heads x 128, {device}{label}")
    print("backend  bytes        time ms   GB/s    reference ms   ratio")
    print(
        f"{args['transfer']:<8} {nbytes / 2**20:8.1f} MiB {seconds * 1e3:9.3f} {nbytes / seconds / 1e9:7.2f}"
        f"   {reference * 1e3:10.3f}   {reference / seconds:6.3f}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    secret = os.urandom(32)  # the two ranks' shared job secret (shm names, zmq tags), as a job's launcher gives
    for backend in args["transfer"].split(","):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_rank_main, args=({**args, "transfer": backend}, port, secret), nprocs=2, join=True)


if __name__ == "__main__":
    main()
