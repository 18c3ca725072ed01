"""shm pools: range allocation, segments reused and never leaked, forged handles refused, a killed rank's
pool removed by the launcher's cleanup (real files in a private tmpfs directory, real processes)."""

from __future__ import annotations

import gc
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import msgspec
import pytest
import torch
import torch.distributed as dist

from epd.launch.secret import job_id
from epd.transfer import TensorSpec, TransferConfig, TransferHandle, as_bytes, build_transfer
from epd.transfer.cleanup import remove_job_segments
from epd.transfer.cuda_pool import ArenaRef, check_arena_ref
from epd.transfer.shm_backend import ShmPayload
from epd.transfer.shm_pool import RangeAllocator

SECRET = bytes(range(32))
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def shm_dir():
    path = Path("/dev/shm") / f"epd-unit-{os.getpid()}-{random.randrange(1 << 30):x}"
    path.mkdir()
    yield path
    for entry in path.iterdir():
        entry.unlink()
    path.rmdir()


def _backend(shm_dir: Path, rank: int = 0, world_size: int = 1, **cfg):
    cfg = TransferConfig(backend="shm", shm_dir=str(shm_dir), **cfg)
    return build_transfer(cfg, rank, world_size, torch.device("cpu"), dist.HashStore(), SECRET)


def _same(got: list[torch.Tensor], want: list[torch.Tensor]) -> bool:
    return len(got) == len(want) and all(torch.equal(as_bytes(a), as_bytes(b)) for a, b in zip(got, want, strict=True))


def test_range_allocator_matches_a_bitmap() -> None:
    rng = random.Random(0)
    alloc, used, live = RangeAllocator(1 << 16), [False] * (1 << 16), []
    for _ in range(2000):
        if live and rng.random() < 0.45:
            start, size = live.pop(rng.randrange(len(live)))
            alloc.free(start, size)
            used[start : start + size] = [False] * size
            continue
        size = rng.randrange(1, 4000)
        start = alloc.alloc(size)
        if start is None:  # only when no aligned free run is long enough
            runs = [s for s in range(0, 1 << 16, 64) if not any(used[s : s + -(-size // 64) * 64])]
            assert all(s + size > 1 << 16 for s in runs)
            continue
        size = -(-size // 64) * 64
        assert start % 64 == 0 and not any(used[start : start + size])
        used[start : start + size] = [True] * size
        live.append((start, size))
    for start, size in live:
        alloc.free(start, size)
    assert alloc.free_bytes == 1 << 16 and alloc.alloc(1 << 16) == 0


def _drained(transfer, timeout_s: float = 10.0) -> bool:
    """Poll until no send is in flight (each freed range's ack crosses a socket), at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while transfer.num_inflight and time.monotonic() < deadline:
        transfer.poll()
        time.sleep(0.001)
    return transfer.num_inflight == 0


def test_many_transfers_reuse_a_few_segments_and_leave_nothing(shm_dir: Path) -> None:
    with _backend(shm_dir) as transfer:
        for i in range(200):
            sent = [torch.randn(1 + i % 7, 1000 + 37 * i), torch.arange(i % 5)]
            got = transfer.recv(transfer.send(0, sent))
            assert _same(got, sent)
            assert list(shm_dir.iterdir()) == [], "a mapped segment must be unlinked at once"
            del got
            transfer.poll()
        assert _drained(transfer)
        assert len(transfer._pools[0]._created) == 1, "one pooled segment serves every transfer"
        held = [transfer.recv(transfer.send(0, [torch.randn(1000)])) for _ in range(3)]
        transfer.poll()
        assert transfer.num_inflight == 3, "ranges viewed by live tensors stay taken"
        del held
        gc.collect()
        assert _drained(transfer), "freed ranges must come back (their acks cross a socket: polled, bounded)"
        transfer.send(0, [torch.ones(5 << 20)])  # never received: its range stays, the file is mapped here only
    assert list(shm_dir.iterdir()) == []


def test_a_full_pool_falls_back_to_segments_of_their_own(shm_dir: Path) -> None:
    with _backend(shm_dir, shm_pool_bytes=0) as transfer:
        sent = [torch.randn(300, 3), torch.tensor([[1, 2, 3]])]
        handle = transfer.send(0, sent)
        assert not msgspec.msgpack.decode(handle.payload, type=ShmPayload).pooled
        assert _same(transfer.recv(handle), sent)
        unused = transfer.send(0, sent)
        assert len(list(shm_dir.iterdir())) == 1
        assert unused.transfer_id == 1
    assert list(shm_dir.iterdir()) == [], "close() unlinks segments nobody mapped"


def test_recv_into_writes_the_given_tensors(shm_dir: Path) -> None:
    with _backend(shm_dir) as transfer:
        sent = [torch.randn(64, 8).to(torch.bfloat16), torch.arange(6).view(2, 3)]
        out = [torch.full((64, 8), float("nan"), dtype=torch.bfloat16), torch.zeros(2, 3, dtype=torch.int64)]
        transfer.recv_into(transfer.send(0, sent), out)
        assert _same(out, sent)
        with pytest.raises(ValueError, match="output 1 is torch.int32"):
            transfer.recv_into(transfer.send(0, sent), [out[0], torch.zeros(2, 3, dtype=torch.int32)])


def _forge(handle: TransferHandle, **changes) -> TransferHandle:
    payload = msgspec.msgpack.decode(handle.payload, type=ShmPayload)
    payload = msgspec.structs.replace(payload, **changes)
    return msgspec.structs.replace(handle, payload=msgspec.msgpack.encode(payload))


def test_forged_handles_are_refused(shm_dir: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    other_job = f"epd-{job_id(b'another job secret 0123456789')}-0-{'ab' * 8}"
    with _backend(shm_dir, rank=1, world_size=2) as receiver, _backend(shm_dir, rank=0, world_size=2) as sender:
        good = sender.send(1, [torch.arange(100, dtype=torch.int32)])
        seg = msgspec.msgpack.decode(good.payload, type=ShmPayload).segment
        cases = {
            "not one of rank 0's of this job": [
                _forge(good, segment=str(victim)),
                _forge(good, segment=other_job),
                _forge(good, segment=seg.replace("-0-", "-1-")),  # the right job, another rank's form
                _forge(good, segment="../" + seg),
            ],
            "does not fit the segment": [_forge(good, offsets=[1 << 40]), _forge(good, offsets=[32])],
            "not a loopback port": [_forge(good, ack_addr="tcp://10.0.0.1:5555")],
            "malformed shm handle": [msgspec.structs.replace(good, payload=b"\x93garbage")],
        }
        for match, handles in cases.items():
            for handle in handles:
                with pytest.raises(ValueError, match=match):
                    receiver.recv(handle)
        assert victim.read_bytes() == b"keep me"
        assert torch.equal(receiver.recv(good)[0], torch.arange(100, dtype=torch.int32))
        with pytest.raises(ValueError, match="holds .* bytes, not"):  # the pooled segment is mapped now
            receiver.recv(_forge(sender.send(1, [torch.ones(3)]), segment_nbytes=4096))
        wrong_size = msgspec.structs.replace(good, specs=[TensorSpec("int32", [1 << 30])])
        with pytest.raises(ValueError, match="does not fit the segment"):
            receiver.recv(wrong_size)


def test_arena_refs_are_checked_without_a_gpu() -> None:
    specs = [TensorSpec("bfloat16", [100]), TensorSpec("int64", [3])]
    ref = ArenaRef("GPU-x", b"h" * 64, 1 << 20, 0, b"rc", 0, b"e" * 64, False, 4096, 320, [0, 256], b"e" * 64)
    check_arena_ref(specs, ref)
    for changes, match in [
        ({"offset": (1 << 20) - 100}, "does not fit the arena"),
        ({"offsets": [0, 300]}, "does not fit its range"),
        ({"offsets": [0, 250]}, "does not fit its range"),  # not aligned
        ({"offsets": [0]}, "one arena offset per tensor"),
        ({"ready_event": b"x" * 1000}, "malformed"),
    ]:
        with pytest.raises(ValueError, match=match):
            check_arena_ref(specs, msgspec.structs.replace(ref, **changes))


KILLED_SENDER = """
import sys, time, torch, torch.distributed as dist
from epd.transfer import TransferConfig, build_transfer
cfg = TransferConfig(backend="shm", shm_dir=sys.argv[1])
t = build_transfer(cfg, 0, 2, torch.device("cpu"), dist.HashStore(), bytes.fromhex(sys.argv[2]))
t.send(1, [torch.ones(1 << 20)])
t.send(1, [torch.ones(40 << 20)])  # a second, larger pool segment
print("sent", flush=True)
time.sleep(60)
"""


def test_a_killed_ranks_pool_is_removed_by_the_launchers_cleanup(shm_dir: Path) -> None:
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(KILLED_SENDER), str(shm_dir), SECRET.hex()],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "sent"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = sorted(p.name for p in shm_dir.iterdir())
    assert len(left) == 2 and all(name.startswith(f"epd-{job_id(SECRET)}-0-") for name in left)
    cfg = TransferConfig(backend="shm", shm_dir=str(shm_dir))
    assert remove_job_segments(cfg, job_id(SECRET)) == 2
    assert list(shm_dir.iterdir()) == []


def test_a_taken_segment_name_is_drawn_again_and_left_alone(shm_dir: Path, monkeypatch) -> None:
    """Names are random, but if one is taken (a stale file, another process), the next is drawn: the
    transfer goes through and the file under the taken name is not touched."""
    from epd.transfer import shm_pool

    draws = iter(["a" * 16, "b" * 16, "c" * 16, "d" * 16])
    monkeypatch.setattr(shm_pool.secrets, "token_hex", lambda n: next(draws))
    with _backend(shm_dir) as transfer:
        squatter = shm_dir / f"{transfer._prefix}0-{'a' * 16}"
        squatter.write_bytes(b"not ours")
        sent = [torch.randn(64, 64)]
        assert _same(transfer.recv(transfer.send(0, sent)), sent)
        assert squatter.read_bytes() == b"not ours"
    assert [p.name for p in shm_dir.iterdir()] == [squatter.name]
