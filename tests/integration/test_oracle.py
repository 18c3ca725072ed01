"""The correctness oracle: epd's greedy tokens equal transformers' ``generate`` on the same inputs.

Every topology and transfer backend serves the same JSONL of chat requests (1–3 images of different
sizes, text before, between and after them, system and assistant turns); all requests arrive at
once, so the language engine batches them, while transformers runs each alone. The requests and
transformers' tokens are fixtures of tests/integration/conftest.py.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import read_results, run_epd

CASES = [
    ("colocated", "nccl"),
    ("1e1p", "nccl"),
    ("1e1p", "shm"),
    ("1e1p", "zmq"),
    ("2e1p", "nccl"),
    ("1e1p1d", "nccl"),
    ("1e1p1d", "shm"),
    ("1e1p1d", "zmq"),
    ("2e1p1d", "shm"),
    ("1e1p_tp2", "nccl"),  # the language instance over two ranks (gloo on CPU)
]


@pytest.mark.parametrize(("topology", "transfer"), CASES, ids=[f"{t}-{b}" for t, b in CASES])
def test_epd_equals_transformers(tmp_path, tiny_qwen25vl, requests_file, reference, topology, transfer):
    run_dir = tmp_path / "run"
    run_epd(
        run_dir,
        f"+topology={topology}",
        f"transfer={transfer}",
        f"model.path={tiny_qwen25vl}",
        "workload=file",
        f"workload.path={requests_file}",
    )
    results = read_results(run_dir)
    got = {r["id"]: r for r in results["requests"]}
    assert set(got) == set(reference)
    for rid, ref in reference.items():
        assert got[rid]["error"] is None, got[rid]["error"]
        assert got[rid]["output_token_ids"] == ref, f"{rid} on {topology}/{transfer}"
    assert results["config"]["topology"]["name"] == topology
    assert results["summary"]["num_requests"] == len(reference)


def test_warmup_requests_are_served_and_left_out(tmp_path, tiny_qwen25vl, requests_file, reference):
    """``workload.warmup_requests``: the file's first request runs before the measured ones and is
    counted apart; the measured ones still equal transformers."""
    run_dir = tmp_path / "run"
    run_epd(
        run_dir,
        "+topology=colocated",
        f"model.path={tiny_qwen25vl}",
        "workload=file",
        f"workload.path={requests_file}",
        "workload.warmup_requests=1",
    )
    results = read_results(run_dir)
    first = json.loads(requests_file.read_text().splitlines()[0])["id"]
    got = {r["id"]: r for r in results["requests"]}
    assert set(got) == set(reference) - {first}
    assert all(got[rid]["output_token_ids"] == reference[rid] for rid in got)
    assert (results["summary"]["num_warmup"], results["summary"]["num_requests"]) == (1, len(reference) - 1)


# NCCL cannot connect two ranks on one GPU: its cases need a GPU per rank
GPU_CASES = [
    ("colocated", "nccl"),
    ("1e1p", "shm"),
    ("1e1p", "zmq"),
    ("2e1p", "shm"),
    ("1e1p", "nccl"),
    ("2e1p", "nccl"),
    ("1e1p1d", "shm"),
]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(("topology", "transfer"), GPU_CASES, ids=[f"{t}-{b}" for t, b in GPU_CASES])
def test_epd_on_gpu_equals_transformers(tmp_path, tiny_qwen25vl, requests_file, reference, topology, transfer):
    """Same oracle with the ranks on GPUs (float32, so NCCL and CUDA IPC carry the embeddings)."""
    world = {"colocated": 1, "1e1p": 2, "2e1p": 3, "1e1p1d": 3}[topology]
    if transfer == "nccl" and world > torch.cuda.device_count():
        pytest.skip(f"nccl with {topology} needs {world} GPUs")
    run_dir = tmp_path / "run"
    run_epd(
        run_dir,
        f"+topology={topology}",
        f"transfer={transfer}",
        f"model.path={tiny_qwen25vl}",
        "model.dtype=float32",
        "device=cuda",
        "workload=file",
        f"workload.path={requests_file}",
    )
    got = {r["id"]: r for r in read_results(run_dir)["requests"]}
    for rid, ref in reference.items():
        assert got[rid]["error"] is None, got[rid]["error"]
        assert got[rid]["output_token_ids"] == ref, f"{rid} on {topology}/{transfer} (cuda)"
