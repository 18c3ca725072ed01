"""Transfer-backend bandwidth against the link's own limit, measured in the same run.

    python -m epd.bench.transfer transfer=shm sizes=64K,1M,16M,256M iters=20 [device=auto|cpu|cuda]

Spawns two ranks on this host (rank 0 sends, rank 1 receives). Each transfer is timed end to
end: from just before send() on rank 0 to the tensors being usable on rank 1 (recv() returned,
device synchronised), both read off CLOCK_MONOTONIC, which all processes of a host share. The
handle crosses a ZMQ socket inside that window, as it does in epd. Transfers run one at a time.

The reference is the link's limit measured in the same run: on CPU a same-process memcpy of
that size (`dst.copy_(src)`), on one GPU a device-to-device copy, across GPUs a plain
dist.send/recv of one tensor. ratio = reference time / transfer time (1.0 = at the limit).
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

DEFAULTS = {"transfer": "nccl", "sizes": "64K,1M,16M,64M,256M", "iters": "20", "warmup": "3", "device": "auto"}
UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


class Ship(msgspec.Struct, array_like=True):
    t0_ns: int
    handle: TransferHandle | None  # None: the reference send/recv follows instead


OPTIONS = {
    "transfer": "backend to measure: nccl (gloo on CPU), shm or zmq",
    "sizes": "payload sizes, comma-separated; K/M/G are binary units",
    "iters": "timed transfers per size (the median is reported)",
    "warmup": "untimed transfers per size before the timed ones",
    "device": "auto (a GPU when there is one), cpu or cuda",
}


def usage() -> str:
    """The ``--help`` text: what the benchmark does and its key=value options with their defaults."""
    options = "\n".join(
        f"  {key}=VALUE{' ' * (9 - len(key))}{text} (default {DEFAULTS[key]})" for key, text in OPTIONS.items()
    )
    return f"usage: python -m epd.bench.transfer [key=value ...]    (installed: epd-bench-transfer)\n{__doc__}\noptions:\n{options}\n"


def parse_args(argv: list[str]) -> dict[str, str]:
    """Hydra-style key=value arguments (`transfer.backend=shm` is accepted for `transfer=shm`)."""
    if {"-h", "--help"} & set(argv):
        print(usage())
        raise SystemExit(0)
    args = dict(DEFAULTS)
    for arg in argv:
        key, sep, value = arg.lstrip("+").partition("=")
        key = {"transfer.backend": "transfer"}.get(key, key)
        if not sep or key not in DEFAULTS:
            raise SystemExit(f"bad argument {arg!r}; expected key=value with key in {', '.join(DEFAULTS)} (see --help)")
        args[key] = value
    return args


def parse_size(text: str) -> int:
    """'64K' / '16M' / '1G' (binary units; an optional trailing 'iB' or 'B') or a byte count."""
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = UNITS.get(text[-1:], 1)
    nbytes = int(float(text[:-1] if text[-1:] in UNITS else text) * scale)
    return nbytes - nbytes % 8  # bfloat16 payload, and an int64 view for the check


def human(nbytes: int) -> str:
    for unit in ("GiB", "MiB", "KiB"):
        scale = UNITS[unit[0]]
        if nbytes >= scale:
            return f"{nbytes / scale:g} {unit}"
    return f"{nbytes} B"


def _devices(device: str) -> list[torch.device]:
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return [torch.device("cpu")] * 2
    count = torch.cuda.device_count()
    return [torch.device("cuda", rank % count) for rank in range(2)]


def _payload(nbytes: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator(device).manual_seed(nbytes)  # same bytes on both ranks
    data = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=device, generator=gen)
    return data.view(torch.bfloat16)  # [nbytes / 2] bfloat16, like embeddings


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _copy_reference_s(nbytes: int, device: torch.device, iters: int) -> float:
    """Median seconds of a same-process copy of nbytes (memcpy on CPU, device-to-device on GPU)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src).fill_(0)
    times = []
    for _ in range(iters + 1):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def _rank_main(rank: int, args: dict[str, str], port: int) -> None:
    devices = _devices(args["device"])
    device = devices[rank]
    if device.type == "cuda":
        torch.cuda.set_device(device)
    store = dist.TCPStore("127.0.0.1", port, 2, rank == 0, timeout=timedelta(minutes=5))
    pg_backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(pg_backend, store=dist.PrefixStore("pg", store), rank=rank, world_size=2)
    cfg = TransferConfig(backend=args["transfer"])
    transfer = build_transfer(cfg, rank, 2, device, dist.PrefixStore("epd", store))
    ctx = zmq.Context()
    control = ctx.socket(zmq.PAIR)
    if rank == 1:
        store.set("bench/control", f"tcp://127.0.0.1:{control.bind_to_random_port('tcp://127.0.0.1')}")
    else:
        control.connect(store.get("bench/control").decode())
    cross_gpu = device.type == "cuda" and devices[0] != devices[1]
    iters, warmup = int(args["iters"]), int(args["warmup"])
    rows = []
    for nbytes in [parse_size(s) for s in args["sizes"].split(",")]:
        payload = _payload(nbytes, device)
        if rank == 0:
            control.recv()  # the receiver finished its same-process reference
            _send_side(transfer, control, payload, iters + warmup, cross_gpu)
            continue
        ref_s = 0.0 if cross_gpu else _copy_reference_s(nbytes, device, iters)
        control.send(b"go")
        times = _recv_side(transfer, control, payload, iters + warmup, reference=False)[warmup:]
        if cross_gpu:
            ref_s = statistics.median(_recv_side(transfer, control, payload, iters + warmup, reference=True)[warmup:])
        rows.append((nbytes, statistics.median(times), ref_s))
        print(f"epd.bench.transfer: {human(nbytes)} measured", file=sys.stderr, flush=True)  # progress
        del payload
    transfer.close()
    control.close(linger=1000)
    ctx.term()
    dist.barrier()
    dist.destroy_process_group()
    if rank == 1:
        _print_table(args, devices, cross_gpu, rows)


def _send_side(transfer, control: zmq.Socket, payload: torch.Tensor, n: int, cross_gpu: bool) -> None:
    busy = payload.is_cuda  # the zmq backend ships staged device data from poll(): poll without sleeping
    for _ in range(n):
        _sync(payload.device)
        t0 = time.perf_counter_ns()
        control.send(msgspec.msgpack.encode(Ship(t0, transfer.send(1, [payload]))))
        while not control.poll(0 if busy else 1):
            transfer.poll()
        control.recv()
        transfer.poll()
    for _ in range(n if cross_gpu else 0):  # reference: a plain send of one tensor
        control.recv()  # the receiver has posted its recv
        t0 = time.perf_counter_ns()
        control.send(msgspec.msgpack.encode(Ship(t0, None)))
        dist.send(payload, 1)
        control.recv()


def _recv_side(transfer, control: zmq.Socket, payload: torch.Tensor, n: int, reference: bool) -> list[float]:
    times, scratch = [], torch.empty_like(payload)
    for i in range(n):
        if reference:
            control.send(b"ready")
        ship = msgspec.msgpack.decode(control.recv(), type=Ship)
        if reference:
            dist.recv(scratch, 0)
            out = [scratch]
        else:
            out = transfer.recv(ship.handle)
        _sync(payload.device)
        times.append((time.perf_counter_ns() - ship.t0_ns) / 1e9)
        if i == 0 and not torch.equal(out[0].view(torch.uint8), payload.view(torch.uint8)):
            raise RuntimeError(f"{'reference' if reference else 'transfer'} of {human(payload.nbytes)} corrupted data")
        del out
        transfer.poll()
        control.send(b"done")
    return times


def _print_table(args: dict[str, str], devices: list[torch.device], cross_gpu: bool, rows: list) -> None:
    if devices[0].type == "cpu":
        where, ref = "CPU (2 processes, one host)", "same-process memcpy (dst.copy_(src))"
    else:
        where = f"{torch.cuda.get_device_name(devices[0])}: rank 0 on {devices[0]}, rank 1 on {devices[1]}"
        ref = "dist.send/recv of one tensor (NCCL)" if cross_gpu else "device-to-device copy (dst.copy_(src))"
    print(f"command: python -m epd.bench.transfer {' '.join(f'{k}={v}' for k, v in args.items())}")
    backend = args["transfer"] + (
        " (gloo: no NCCL on CPU)" if args["transfer"] == "nccl" and devices[0].type == "cpu" else ""
    )
    print(f"device:  {where}; torch {torch.__version__}; backend {backend}")
    print("note:    time = median end-to-end (send() to tensors usable on the receiver, handle over ZMQ);")
    print(f"         reference = {ref}; ratio = reference time / transfer time (1.0 = at the limit)")
    print(f"{'size':>10} {'ms':>9} {'GB/s':>8} {'ref ms':>9} {'ref GB/s':>9} {'ratio':>6}")
    for nbytes, t, ref_t in rows:
        print(f"{human(nbytes):>10} {t * 1e3:9.3f} {nbytes / t / 1e9:8.2f} {ref_t * 1e3:9.3f} "
              f"{nbytes / ref_t / 1e9:9.2f} {ref_t / t:6.2f}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m epd.bench.transfer`."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    TransferConfig(backend=args["transfer"])  # unknown backend: ValueError before spawning
    devices = _devices(args["device"])
    if args["transfer"] == "nccl" and devices[0].type == "cuda" and devices[0] == devices[1]:
        raise SystemExit("nccl needs two GPUs (NCCL refuses two ranks on one GPU); try transfer=shm or zmq")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // 2)))
    mp.spawn(_rank_main, args=(args, port), nprocs=2, join=True)


if __name__ == "__main__":
    main()
