"""The data plane's part of a profile: transfer time vs bytes per backend, the control-message
latency, and the all-reduce of tensor parallelism where two ranks can run it.

Two processes on this host, with ``epd.bench.transfer``'s ``Bench``: one image item a round, from
``send()`` to the tensors being usable on the receiver, the handle crossing epd's sealed control
plane in an ``ItemReady`` and the receiver turning its loop as a language rank does. On one GPU ``nccl`` is skipped (NCCL refuses two ranks on one device) and
the all-reduce cannot be measured: its figure is then assumed (``ASSUMED_ALLREDUCE``) and the
profile says so.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import statistics
import tempfile
import time
from pathlib import Path

import msgspec
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import zmq

from epd.bench.transfer import parse_size
from epd.bench.transfer_ranks import Bench, _sync
from epd.profile.fit import fit_linear

ASSUMED_ALLREDUCE = {
    "allreduce_bw_bytes_per_s": 350e9,
    "allreduce_latency_s": 15e-6,
    "source": "assumed: NVLink (../shared/BENCH.md: NCCL send/recv 350 GB/s between two H200s), ~15 µs per "
    "all-reduce inside a CUDA graph; not measured (one GPU). Override with profile.allreduce_gbps / "
    "allreduce_latency_us, or sim.allreduce_gbps / allreduce_latency_us",
}
PINGS = 200
BENCH_ARGS = ("device", "iters", "warmup", "streams", "stream_min")


def _rank_main(rank: int, args: dict, port: int, out_file: str) -> None:
    bench = Bench(rank, {k: str(v) for k, v in args.items() if k in BENCH_ARGS}, port)
    torch.set_num_threads(1)
    store, device = bench.store, bench.device
    ctx = zmq.Context()
    control = ctx.socket(zmq.PAIR)
    if rank == 1:
        store.set("profile/control", f"tcp://127.0.0.1:{control.bind_to_random_port('tcp://127.0.0.1')}")
    else:
        control.connect(store.get("profile/control").decode())
    latency = _latency(rank, control)
    if rank == 0:  # the side that timed the round trips tells the side that writes the results
        store.set("profile/latency", repr(latency))
    result: dict = {"latency_s": float(store.get("profile/latency").decode()), "transfer": {}, "allreduce": None}
    result.update(_channel_costs(rank, store, bench.secret))
    for backend in args["backends"]:
        if backend == "nccl" and device.type == "cuda" and not bench.cross_gpu:
            continue  # NCCL refuses two ranks on one GPU
        measured = bench.run(backend, args["sizes"])
        result["transfer"][backend] = [[row[0], row[1]] for row in measured.get("rows", [])]
    if device.type == "cpu" or bench.cross_gpu:
        result["allreduce"] = _allreduce(args["sizes"], device, args["iters"])
    control.close(linger=1000)
    ctx.term()
    dist.barrier()
    bench.close()
    if rank == 1:
        Path(out_file).write_text(json.dumps(result))


def _latency(rank: int, control: zmq.Socket) -> float:
    """Half the median round trip of a small msgpack message between the two processes."""
    msg = msgspec.msgpack.encode({"request_id": "x" * 16, "index": 0})
    times = []
    for _ in range(PINGS):
        if rank == 0:
            t0 = time.perf_counter()
            control.send(msg)
            control.recv()
            times.append((time.perf_counter() - t0) / 2)
        else:
            control.send(control.recv())
    return statistics.median(times) if times else 0.0


def _channel_costs(rank: int, store: dist.Store, secret: bytes) -> dict:
    """epd's own ``Channel`` between the two processes: what sending one token's ``RequestOutput`` costs
    the sender (encode + send), receiving and decoding it the receiver, and an empty inbox poll (a
    rank's loop does one per turn)."""
    from epd.protocol import Channel, RequestOutput

    roles = {"profile0": "language", "profile1": "frontend"}  # a language rank's outputs to the frontend
    channel = Channel(f"profile{rank}", dist.PrefixStore("profile-ch", store), secret, roles)
    msg = RequestOutput(request_id="req-123456", token_ids=[42])
    costs: dict = {}
    if rank == 0:
        channel.send("profile1", msg)  # connects
        times = []
        for _ in range(PINGS):
            t0 = time.perf_counter()
            channel.send("profile1", msg)
            times.append(time.perf_counter() - t0)
        store.set("profile/send_s", repr(statistics.median(times)))
    else:
        got, times, polls = 0, [], []
        while got < PINGS + 1:
            t0 = time.perf_counter()
            msgs = channel.recv(0)
            if msgs:
                times.append((time.perf_counter() - t0) / len(msgs))
                got += len(msgs)
        for _ in range(PINGS):
            t0 = time.perf_counter()
            channel.recv(0)
            polls.append(time.perf_counter() - t0)
        costs = {"recv_s": statistics.median(times), "poll_s": statistics.median(polls)}
    dist.barrier()
    costs["send_s"] = float(store.get("profile/send_s").decode())
    channel.close()
    return costs


def _allreduce(sizes: list[int], device: torch.device, iters: int) -> list[list[float]]:
    rows = []
    for nbytes in sizes:
        t = torch.ones(nbytes // 2, dtype=torch.bfloat16, device=device)
        times = []
        for _ in range(iters + 2):
            _sync(device)
            t0 = time.perf_counter()
            dist.all_reduce(t)
            _sync(device)
            times.append(time.perf_counter() - t0)
        rows.append([nbytes, statistics.median(times[2:])])
    return rows


def measure_transfer(device: str, backends: list[str], sizes: list[str], iters: int = 10) -> dict:
    """``transfer`` (per backend: points and a linear fit), ``control`` and ``parallel`` sections."""
    args = {"device": device, "backends": list(backends), "sizes": [parse_size(s) for s in sizes], "iters": iters,
            "warmup": 2, "streams": 4, "stream_min": ""}  # fmt: skip
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out_file = os.path.join(tmp, "transfer.json")
        os.environ.setdefault("EPD_BENCH_SECRET", secrets.token_hex(32))  # the ranks' job secret
        mp.spawn(_rank_main, args=(args, port, out_file), nprocs=2, join=True)
        raw = json.loads(Path(out_file).read_text())
    transfer = {
        name: {"points": rows, "fit": fit_linear([r[0] for r in rows], [r[1] for r in rows])}
        for name, rows in raw["transfer"].items()
    }
    if raw["allreduce"]:
        fit = fit_linear([r[0] for r in raw["allreduce"]], [r[1] for r in raw["allreduce"]])
        parallel = {
            "allreduce_bw_bytes_per_s": 1.0 / fit["b"]
            if fit["b"] > 0
            else ASSUMED_ALLREDUCE["allreduce_bw_bytes_per_s"],
            "allreduce_latency_s": fit["a"],
            "points": raw["allreduce"],
            "source": "measured: all_reduce between two ranks of this host (tp=2; s = latency + bytes / bandwidth)",
        }
    else:
        parallel = dict(ASSUMED_ALLREDUCE)
    control = {key: raw[key] for key in ("latency_s", "send_s", "recv_s", "poll_s")}
    return {"transfer": transfer, "control": control, "parallel": parallel}
