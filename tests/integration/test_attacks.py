"""Fault injection on a real 2e1p job: what a local process without the job secret can send into
every inbox (garbage, another protocol version, frames over the size limit, forged messages of every
kind, raw TCP bytes), a rewritten store entry, a forged shm handle aimed at a file of ours, and a
SIGKILLed encoder halfway. The job must finish every request exactly once, with no forged token,
and touch no file outside its own.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import msgspec
import pytest
import zmq

from epd.protocol import EncodeItem, ItemReady, NewRequest, RequestOutput, SamplingParams, Shutdown, encode
from epd.protocol.auth import seal
from epd.transfer import TensorSpec, TransferHandle
from epd.transfer.shm_backend import ShmPayload
from tests.integration.job_harness import Job

FORGED_TOKEN = 1_234_567
NAMES = ("frontend", "rank0", "rank1", "rank2")


def _push(ctx: zmq.Context, address: str, frames: list[bytes]) -> None:
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.connect(address)
    sock.send_multipart(frames)
    sock.close()


def _raw_tcp(address: str, data: bytes) -> None:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(data)


def _forged_shm_handle(victim: Path) -> TransferHandle:
    payload = ShmPayload(segment=str(victim), segment_nbytes=7, offsets=[0], cuda=[], ack_addr="")
    return TransferHandle(
        backend="shm",
        src=0,
        dst=2,
        transfer_id=0,
        specs=[TensorSpec("uint8", [7])],
        payload=msgspec.msgpack.encode(payload),
    )


def inject(job: Job, victim: Path) -> tuple[zmq.Context, zmq.Socket]:
    """Every injection into every inbox; returns a socket that the store was rewritten to point at."""
    ctx = zmq.Context()
    wrong_key = os.urandom(32)
    addresses = {name: job.address(name) for name in NAMES}
    some_id = job.workload_ids()[-1]
    for address in addresses.values():
        _push(ctx, address, [b"\x80\x04\x95 not a message"])
        _push(ctx, address, [os.urandom(40), os.urandom(200), os.urandom(32)])
        _push(ctx, address, [b"epd2:frontend", encode(Shutdown()), bytes(32)])  # an older protocol version
        _push(ctx, address, seal(wrong_key, "frontend", encode(Shutdown())))  # right form, wrong secret
        _push(ctx, address, [b"x" * (20 << 20)])  # over launch.max_message_bytes
        _raw_tcp(address, os.urandom(4096))  # not even ZMTP
    forged = {
        "frontend": RequestOutput(request_id=some_id, token_ids=[FORGED_TOKEN], finished=True, finish_reason="stop"),
        "rank2": ItemReady(request_id=some_id, index=0, modality="image", handle=_forged_shm_handle(victim)),
        "rank0": EncodeItem(request_id="x", index=0, modality="image", source="/etc/passwd", language_rank=2),
        "rank1": NewRequest(request_id="x", prompt_token_ids=[1], items=[], sampling=SamplingParams()),
    }
    for name, msg in forged.items():
        sender = "rank2" if name == "frontend" else "rank0" if name == "rank2" else "frontend"
        _push(ctx, addresses[name], seal(wrong_key, sender, encode(msg)))
    trap = ctx.socket(zmq.PULL)
    port = trap.bind_to_random_port("tcp://127.0.0.1")
    job.store().set("epd/addr/frontend", f"tcp://127.0.0.1:{port} {'00' * 32}")
    return ctx, trap


@pytest.mark.slow
def test_job_survives_every_injection_and_a_lost_encoder(tmp_path, tiny_qwen25vl):
    shm = Path("/dev/shm") / f"epd-attack-{os.getpid()}"
    shm.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    job = Job(
        tmp_path / "run",
        "+topology=2e1p",
        "transfer=shm",
        f"transfer.shm_dir={shm}",
        f"model.path={tiny_qwen25vl}",
        "workload.num_requests=2000",
        "workload.request_rate=100",
        "workload.output_len=4",
        "workload.num_distinct_images=32",
        "launch.heartbeat_timeout_s=5",
    )
    try:
        job.wait_records(50)
        ctx, trap = inject(job, victim)
        job.wait_records(1000)
        os.kill(job.rank_pid(1), 9)  # an encoder dies halfway
        code = job.wait(timeout=400)
        results = job.results()
        assert code == 0, job.output()
        ids = [r["id"] for r in results["requests"]]
        assert len(ids) == len(set(ids)) == 2000 and set(ids) == set(job.workload_ids())
        assert [r["id"] for r in results["requests"] if r["error"]] == []
        assert not [r["id"] for r in results["requests"] if FORGED_TOKEN in r["output_token_ids"]]
        assert all(len(r["output_token_ids"]) == 4 for r in results["requests"])
        assert victim.read_text() == "keep me"
        assert list(shm.iterdir()) == [], "the job left shm segments behind"
        summary = results["summary"]
        dropped = summary["dropped_messages"]
        assert dropped.get("bad-mac", 0) >= 2 and dropped.get("malformed", 0) >= 2 and dropped.get("version", 0) >= 1
        lost = [e for e in summary["events"] if e["event"] == "encoder_lost"]
        assert len(lost) == 1 and lost[0]["rank"] == 1 and "SIGKILL" in lost[0]["reason"]
        log = (job.run_dir / "run.log").read_text()
        for rank in ("rank0", "rank1", "rank2"):  # each rank dropped and logged what it was sent
            assert f"{rank}: dropped a control message (bad-mac)" in log
        assert trap.poll(0) == 0, "a rewritten store entry redirected messages"
        assert not job.leftovers()
        print(f"\n2000 requests, {len(lost[0]) and lost[0]['items_resent']} items re-sent, dropped {dropped}")
        ctx.destroy(linger=0)
    finally:
        job.kill()
        for entry in shm.iterdir():
            entry.unlink()
        shm.rmdir()
