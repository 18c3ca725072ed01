"""Jobs over two nodes (two launchers on 127.0.0.1 acting as separate nodes, 2 ranks each): torchrun's
agents and epd's own launcher both run 2e1p1d to transformers' tokens; shm is refused across nodes."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys

import pytest

from tests.conftest import REPO, read_results

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _two_nodes(commands: list[list[str]], secret: str | None) -> list[subprocess.CompletedProcess]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("EPD_JOB_SECRET", None)
    if secret is not None:
        env["EPD_JOB_SECRET"] = secret
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for cmd in commands]  # fmt: skip
    outs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        outs.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, ""))
    return outs


def _torchrun(node: int, port: int, overrides: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={node}", "--nproc-per-node=2",
        "--master-addr=127.0.0.1", f"--master-port={port}", "-m", "epd.run", *overrides,
    ]  # fmt: skip


def _overrides(tiny, requests_file, run_dir, transfer: str) -> list[str]:
    return [
        "+topology=2e1p1d", f"transfer={transfer}", f"model.path={tiny}", "workload=file",
        f"workload.path={requests_file}", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip


def _check(run_dir, reference) -> None:
    got = {r["id"]: r for r in read_results(run_dir)["requests"]}
    assert set(got) == set(reference)
    for rid, ref in reference.items():
        assert got[rid]["error"] is None, got[rid]["error"]
        assert got[rid]["output_token_ids"] == ref, rid
        assert got[rid]["kv_transfer_bytes"] > 0


def test_torchrun_two_nodes_equal_transformers(tmp_path, tiny_qwen25vl, requests_file, reference):
    port, run_dir = _free_port(), tmp_path / "run"
    overrides = _overrides(tiny_qwen25vl, requests_file, run_dir, "zmq")
    outs = _two_nodes([_torchrun(n, port, overrides) for n in (0, 1)], secrets.token_hex(32))
    assert [o.returncode for o in outs] == [0, 0], "\n".join(o.stdout[-3000:] for o in outs)
    _check(run_dir, reference)


def test_epd_launcher_two_nodes_equal_transformers(tmp_path, tiny_qwen25vl, requests_file, reference):
    port, run_dir = _free_port(), tmp_path / "run"
    dirs = [run_dir, tmp_path / "node1"]  # each node has a run directory of its own
    nodes = [
        [sys.executable, "-m", "epd.run", *_overrides(tiny_qwen25vl, requests_file, dirs[n], "zmq"),
         "launch.nnodes=2", f"launch.node_rank={n}", "launch.master_addr=127.0.0.1", f"launch.master_port={port}"]
        for n in (0, 1)
    ]  # fmt: skip
    outs = _two_nodes(nodes, secrets.token_hex(32))
    assert [o.returncode for o in outs] == [0, 0], "\n".join(o.stdout[-3000:] for o in outs)
    _check(run_dir, reference)


def test_shm_is_refused_across_nodes_and_a_secret_is_required(tmp_path, tiny_qwen25vl, requests_file):
    port = _free_port()
    outs = _two_nodes(
        [_torchrun(n, port, _overrides(tiny_qwen25vl, requests_file, tmp_path / "run", "shm")) for n in (0, 1)],
        secrets.token_hex(32),
    )
    assert all(o.returncode != 0 for o in outs)
    assert "transfer=shm moves data through one host's memory" in outs[0].stdout
    node = [sys.executable, "-m", "epd.run", *_overrides(tiny_qwen25vl, requests_file, tmp_path / "r2", "zmq"),
            "launch.nnodes=2", "launch.node_rank=1", "launch.master_addr=127.0.0.1", f"launch.master_port={port}"]  # fmt: skip
    (out,) = _two_nodes([node], secret=None)
    assert out.returncode == 2 and "EPD_JOB_SECRET" in out.stdout
