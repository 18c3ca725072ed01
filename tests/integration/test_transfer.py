"""Two real processes per backend: send many tensor lists, ship handles over ZMQ+msgspec, check bits.

Run as a script, this file is one rank of the pair (`--rank 0` sends, `--rank 1` receives).
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import glob
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest
import torch

from epd.transfer import TransferConfig, TransferHandle, as_bytes, build_transfer

REPO_ROOT = Path(__file__).resolve().parents[2]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.int32, torch.uint8, torch.bool]
EXTRA_DTYPES = [torch.float64, torch.int8, torch.int16, torch.complex64, torch.complex128, torch.float8_e4m3fn]
LARGE_SHAPE = [8448, 4096]  # bfloat16: 66 MiB (> 64 MiB), 69.2 MB
DISCARDED_CASE = 6  # the receiver discards this one; later handles must still work
RECV_INTO_CASES = (4, 5, 7)  # received with recv_into
NUM_CASES = 12
WORKER_TIMEOUT_S = 90  # a worker still running then dumps its stacks and exits


class Ship(msgspec.Struct):
    case: int
    handle: TransferHandle


class Result(msgspec.Struct):
    errors: list[str]


def _random(shape: list[int], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Random bit patterns (NaN payloads, -0, subnormals included); valid values for bool."""
    numel = 1
    for dim in shape:
        numel *= dim
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    nbytes = numel * dtype.itemsize
    return torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=gen).view(dtype).view(shape)


def make_case(case: int) -> list[torch.Tensor]:
    """The tensors of one send; both ranks build the same ones from the case number."""
    gen = torch.Generator().manual_seed(1234 + case)
    if case == 0:
        return [_random([5, 7], dtype, gen) for dtype in DTYPES + EXTRA_DTYPES]
    if case == 1:  # 0-d scalar, empty tensors, a tensor of one element
        return [_random([], torch.float32, gen), torch.empty(0), torch.empty(3, 0, 2, dtype=torch.bfloat16)] + [
            _random([1], torch.int64, gen)
        ]
    if case == 2:  # non-contiguous inputs: transpose, strided slice, stride-0 expand
        base = _random([6, 8], torch.bfloat16, gen)
        return [base.t(), base[::2, 1:], _random([3], torch.int32, gen).expand(4, 3)]
    if case == 3:
        return []  # a send of no tensors at all
    if case == 4:  # many small tensors (nccl packs them) and one 2 MiB tensor (own op)
        return [_random([i + 1, 3], DTYPES[i % len(DTYPES)], gen) for i in range(20)] + [
            _random([1024, 1024], torch.float16, gen)
        ]
    if case == 5:  # > 64 MiB of embeddings plus its grid
        return [_random(LARGE_SHAPE, torch.bfloat16, gen), torch.tensor([[1, 88, 96]])]
    # several sends in a row of mixed small tensors
    return [_random([case, 64], torch.bfloat16, gen), _random([case], torch.int64, gen)]


def check(case: int, received: list[torch.Tensor]) -> list[str]:
    expected = make_case(case)
    if len(received) != len(expected):
        return [f"case {case}: {len(received)} tensors, expected {len(expected)}"]
    errors = []
    for i, (got, want) in enumerate(zip(received, expected, strict=True)):
        where = f"case {case} tensor {i}"
        if got.dtype != want.dtype or got.shape != want.shape:
            errors.append(f"{where}: {got.dtype}{list(got.shape)} != {want.dtype}{list(want.shape)}")
        elif not torch.equal(as_bytes(got), as_bytes(want)):
            errors.append(f"{where}: bytes differ")
    return errors


def poisoned_like(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A contiguous tensor of ``tensor``'s dtype and shape on ``device`` with every byte 0xff."""
    out = torch.empty(tensor.shape, dtype=tensor.dtype, device=device)
    as_bytes(out).fill_(255)  # contiguous: as_bytes is a view
    return out


def to_device(case: int, tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """On GPU runs, every tensor but the last of case 4 moves to the device (a mixed send)."""
    last = len(tensors) - 1
    return [t if case == 4 and i == last else t.to(device) for i, t in enumerate(tensors)]


def pooled_ipc_errors(transfer, device: torch.device) -> list[str]:
    """shm on GPUs: the receiver opened the sender's arenas and events once, not once per transfer."""
    importer = getattr(transfer, "_importer", None)
    if transfer.name != "shm" or device.type != "cuda" or importer is None or not transfer.cfg.shm_cuda_pool_bytes:
        return []
    arenas, events = len(importer._arenas._arenas), len(importer._arenas._events)
    if not 1 <= arenas <= 2 or not 1 <= events < NUM_CASES:  # a small first arena, then one for the 69 MB case
        return [f"the receiver opened {arenas} arenas and {events} events for {NUM_CASES} transfers"]
    return []


def worker(rank: int, port: int, backend: str, shm_prefix: str, device_type: str) -> int:
    import torch.distributed as dist
    import zmq

    faulthandler.dump_traceback_later(WORKER_TIMEOUT_S, exit=True)  # a hang prints every stack
    torch.set_num_threads(1)
    device = torch.device("cpu")
    if device_type.startswith("cuda"):  # "cuda": rank r on GPU r (mod count); "cuda-same": both on GPU 0
        device = torch.device("cuda", 0 if device_type == "cuda-same" else rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    store = dist.TCPStore("127.0.0.1", port, 2, rank == 0, timeout=timedelta(seconds=60))
    pg_backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(pg_backend, store=dist.PrefixStore("pg", store), rank=rank, world_size=2)
    backend, _, variant = backend.partition(":")  # "shm:direct": device tensors shared without the arena
    pool = {"shm_cuda_pool_bytes": 0} if variant == "direct" else {}
    cfg = TransferConfig(backend=backend, shm_prefix=shm_prefix, recv_timeout_s=60, **pool)
    secret = hashlib.sha256(f"job on port {port}".encode()).digest()  # the same on both ranks, as epd.run's
    transfer = build_transfer(cfg, rank, 2, device, dist.PrefixStore("epd", store), secret, "127.0.0.1")
    ctx = zmq.Context()
    control = ctx.socket(zmq.PAIR)
    control.setsockopt(zmq.LINGER, 1000)
    if rank == 1:
        control_port = control.bind_to_random_port("tcp://127.0.0.1")
        store.set("test/control", f"tcp://127.0.0.1:{control_port}")
    else:
        control.connect(store.get("test/control").decode())
    errors: list[str] = []
    if rank == 0:
        # Sends in a row, each handle shipped at once: a pending NCCL send can hold up whatever
        # synchronizes the device (a cudaMalloc) until its receiver has the handle.
        for case in range(NUM_CASES):
            handle = transfer.send(1, to_device(case, make_case(case), device))
            control.send(msgspec.msgpack.encode(Ship(case=case, handle=handle)))
        if backend == "shm":
            transfer.send(1, make_case(0))  # never shipped: close() must unlink its segment
        while not control.poll(10):
            transfer.poll()
        errors = msgspec.msgpack.decode(control.recv(), type=Result).errors
    else:
        for _ in range(NUM_CASES):
            ship = msgspec.msgpack.decode(control.recv(), type=Ship)
            if ship.case == DISCARDED_CASE:
                transfer.discard(ship.handle)
            else:
                if ship.case in RECV_INTO_CASES:  # into tensors made beforehand, every byte of them poisoned
                    received = [poisoned_like(t, device) for t in make_case(ship.case)]
                    transfer.recv_into(ship.handle, received)
                else:
                    received = transfer.recv(ship.handle)
                errors += [f"{t.device} is not {device}" for t in received if t.device != device]
                errors += check(ship.case, [t.cpu() for t in received])
            transfer.poll()
        errors += pooled_ipc_errors(transfer, device)
        control.send(msgspec.msgpack.encode(Result(errors=errors)))
    transfer.close()
    control.close()
    ctx.term()
    dist.barrier()
    dist.destroy_process_group()
    for error in errors:
        print(f"rank {rank}: {error}", file=sys.stderr)
    return 1 if errors else 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_pair(backend: str, shm_prefix: str, device: str = "cpu", timeout_s: float = 120) -> None:
    """Run both ranks; fail with their output if either exits non-zero. Always reaps them."""
    env = dict(os.environ, PYTHONPATH=f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    args = ["--port", str(_free_port()), "--backend", backend, "--shm-prefix", shm_prefix, "--device", device]
    # output to files: a full pipe can never block a rank
    with tempfile.TemporaryFile() as log0, tempfile.TemporaryFile() as log1:
        logs = [log0, log1]
        procs = [
            subprocess.Popen([sys.executable, __file__, *args, "--rank", str(rank)], env=env, stdout=log, stderr=log)
            for rank, log in enumerate(logs)
        ]
        try:
            deadline = time.monotonic() + timeout_s
            for proc in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
        for rank, (proc, log) in enumerate(zip(procs, logs, strict=True)):
            log.seek(0)
            output = log.read().decode(errors="replace")
            assert proc.returncode == 0, f"rank {rank} exited with {proc.returncode}:\n{output[-6000:]}"


@pytest.mark.parametrize("backend", ["nccl", "shm", "zmq"])
def test_two_processes_round_trip_bit_exact(backend: str) -> None:
    _round_trip(backend, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("backend", "placement"),
    [
        ("nccl", "cuda"),
        ("shm", "cuda"),
        ("shm:direct", "cuda"),
        ("zmq", "cuda"),
        ("shm", "cuda-same"),
        ("shm:direct", "cuda-same"),
        ("zmq", "cuda-same"),
    ],
)
def test_two_gpu_processes_round_trip_bit_exact(backend: str, placement: str) -> None:
    """placement "cuda": ranks on GPUs 0 and 1; "cuda-same": both on GPU 0 (NCCL refuses that)."""
    needed = 2 if placement == "cuda" else 1
    if torch.cuda.device_count() < needed:
        pytest.skip(f"needs {needed} GPU(s)")
    _round_trip(backend, placement)


def _round_trip(backend: str, device: str) -> None:
    shm_prefix = f"epdtest{uuid.uuid4().hex[:8]}"
    try:
        run_pair(backend, shm_prefix, device)
    finally:
        leftovers = glob.glob(f"/dev/shm/{shm_prefix}*")
        for path in leftovers:
            os.unlink(path)
    assert not leftovers, f"shm segments left behind: {leftovers}"


def test_unknown_backend_is_a_clear_value_error() -> None:
    with pytest.raises(ValueError, match=r"'carrier_pigeon'.*known: nccl, shm, zmq"):
        TransferConfig(backend="carrier_pigeon")
    cfg = TransferConfig(backend="zmq")
    cfg.backend = "carrier_pigeon"  # mutated after validation: build_transfer checks again
    with pytest.raises(ValueError, match=r"unknown transfer backend 'carrier_pigeon'; known: nccl, shm, zmq"):
        build_transfer(cfg, 0, 1, torch.device("cpu"), None)  # type: ignore[arg-type]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--shm-prefix", required=True)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    sys.exit(worker(args.rank, args.port, args.backend, args.shm_prefix, args.device))
