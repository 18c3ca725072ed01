"""However a job ends — a rank or the frontend SIGKILLed or SIGSTOPped, the launcher killed, SIGTERM,
Ctrl-C — every request of the workload is in results.json exactly once (finished ones with their
tokens, the others ``aborted: <why>``), the exit code says what happened, and no process of the job is
left behind. A lost encoder does not end the run: its items go to the other encoder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from tests.integration.job_harness import Job, wait_gone

pytestmark = pytest.mark.slow

OUTPUT_LEN = 8
LONG = (
    "workload.num_requests=3000",
    "workload.request_rate=20",
    f"workload.output_len={OUTPUT_LEN}",
    "workload.num_distinct_images=8",
    "launch.heartbeat_timeout_s=3",
    "launch.shutdown_grace_s=2",
)


def _job(tmp_path, tiny, *extra: str, torchrun: int = 0) -> Job:
    overrides = ("+topology=2e1p", "transfer=shm", f"model.path={tiny}", *LONG, *extra)
    return Job(tmp_path / "run", *overrides, torchrun=torchrun)


def _every_request_once(job: Job, reason: str) -> list[dict]:
    """results.json lists each workload request once; the finished ones are complete and the others say ``reason``."""
    requests = job.results()["requests"]
    ids = [r["id"] for r in requests]
    assert len(ids) == len(set(ids)) and set(ids) == set(job.workload_ids())
    finished = [r for r in requests if r["error"] is None]
    assert finished and all(len(r["output_token_ids"]) == OUTPUT_LEN and r["ttft_ms"] > 0 for r in finished)
    aborted = [r for r in requests if r["error"] is not None]
    assert aborted and all(r["error"].startswith("aborted: ") and reason in r["error"] for r in aborted), aborted[:2]
    return requests


def test_sigkill_of_the_language_rank_cuts_the_run_short(tmp_path, tiny_qwen25vl):
    job = _job(tmp_path, tiny_qwen25vl)
    try:
        job.wait_records(20)
        os.kill(job.rank_pid(2), signal.SIGKILL)
        killed = time.time()
        assert job.wait(60) == 1
        assert time.time() - killed < 8, "the job took too long to stop"
        _every_request_once(job, "rank 2 (language) was killed by SIGKILL")
        summary = job.results()["summary"]
        assert summary["status"] == "cut_short" and "rank 2" in summary["cut_short_reason"]
        assert not job.leftovers()
    finally:
        job.kill()


def test_stopped_language_rank_is_named_and_the_run_cut_short(tmp_path, tiny_qwen25vl):
    job = _job(tmp_path, tiny_qwen25vl)
    try:
        job.wait_records(20)
        os.kill(job.rank_pid(2), signal.SIGSTOP)
        assert job.wait(60) == 1
        _every_request_once(job, "rank 2 has been silent for 3 s")
        assert not job.leftovers()
    finally:
        job.kill()


def test_stopped_encoder_is_replaced_and_the_run_completes(tmp_path, tiny_qwen25vl):
    job = Job(
        tmp_path / "run",
        "+topology=2e1p",
        "transfer=zmq",
        f"model.path={tiny_qwen25vl}",
        "workload.num_requests=200",
        "workload.request_rate=25",
        f"workload.output_len={OUTPUT_LEN}",
        "launch.heartbeat_timeout_s=3",
        "launch.shutdown_grace_s=2",
    )
    try:
        job.wait_records(20)
        os.kill(job.rank_pid(0), signal.SIGSTOP)
        assert job.wait(120) == 0, job.output()
        results = job.results()
        assert [r for r in results["requests"] if r["error"]] == []
        lost = results["summary"]["events"]
        assert [e["rank"] for e in lost] == [0] and "silent" in lost[0]["reason"]
        assert not job.leftovers()
    finally:
        job.kill()


def test_sigkill_of_the_frontend_stops_the_job_and_keeps_finished_records(tmp_path, tiny_qwen25vl):
    job = _job(tmp_path, tiny_qwen25vl)
    try:
        job.wait_records(20)
        ranks = [job.rank_pid(r) for r in range(3)]
        os.kill(job.frontend_pid(), signal.SIGKILL)
        assert wait_gone(ranks, 5) < 5
        assert job.wait(30) == 1
        finished = job.num_records()
        assert finished >= 20
        rebuild = subprocess.run(
            [sys.executable, "-m", "epd.results", str(job.run_dir)], cwd=REPO, capture_output=True, text=True
        )
        assert rebuild.returncode == 0, rebuild.stderr
        requests = _every_request_once(job, "the frontend stopped before it finished")
        assert sum(r["error"] is None for r in requests) == finished
        assert job.results()["summary"]["status"] == "rebuilt"
        assert not job.leftovers()
    finally:
        job.kill()


def test_stopped_frontend_stops_the_job(tmp_path, tiny_qwen25vl):
    job = _job(tmp_path, tiny_qwen25vl)
    try:
        job.wait_records(20)
        os.kill(job.frontend_pid(), signal.SIGSTOP)
        assert job.wait(60) == 1
        assert not job.leftovers()
        assert "the frontend has been silent" in (job.run_dir / "run.log").read_text() + job.output()
    finally:
        job.kill()


def test_sigkill_of_the_launcher_leaves_no_process(tmp_path, tiny_qwen25vl):
    job = _job(tmp_path, tiny_qwen25vl)
    try:
        job.wait_records(20)
        tree = list(job.tree())
        assert len(tree) == 4  # three ranks and the frontend
        os.kill(job.proc.pid, signal.SIGKILL)
        assert wait_gone(tree, 5) < 5
        assert job.num_records() >= 20
    finally:
        job.kill()


@pytest.mark.parametrize(
    ("signum", "code", "target"), [(signal.SIGTERM, 143, "launcher"), (signal.SIGINT, 130, "group")]
)
def test_sigterm_and_ctrl_c_keep_every_result(tmp_path, tiny_qwen25vl, signum, code, target):
    job = _job(tmp_path, tiny_qwen25vl)
    try:
        job.wait_records(20)
        if target == "group":  # what a terminal does on Ctrl-C: the whole foreground process group
            os.killpg(job.proc.pid, signum)
        else:
            os.kill(job.proc.pid, signum)
        assert job.wait(60) == code
        _every_request_once(job, f"interrupted by {signal.Signals(signum).name}")
        assert "results in" in job.output().splitlines()[-1] or "results in" in job.output()
        assert not job.leftovers()
    finally:
        job.kill()


def test_sigkill_of_torchrun_leaves_no_process(tmp_path, tiny_qwen25vl):
    job = _job(tmp_path, tiny_qwen25vl, torchrun=3)
    try:
        job.wait_records(20)
        assert len(job.tree()) >= 4  # three ranks and the frontend (and torchrun's own helpers)
        # found before the kill: once torchrun is gone its children are re-parented, out of its tree
        ranks_and_frontend = [job.rank_pid(r) for r in range(3)] + [job.frontend_pid()]
        os.kill(job.proc.pid, signal.SIGKILL)
        assert wait_gone(ranks_and_frontend, 5) < 5
    finally:
        job.kill()
