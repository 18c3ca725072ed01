"""``python -m epd.profile`` on the tiny checkpoint (CPU, quick points): the file's schema and its numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from epd.profile.fit import evaluate, evaluate_features, piecewise
from epd.profile.schema import load_profile

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("profile")
    cmd = [sys.executable, "-m", "epd.profile", f"hydra.run.dir={out}", "device=cpu", "profile.quick=true",
           "profile.repeats=2"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return load_profile(out / "profile.json")


def test_profile_describes_where_it_was_measured(profile):
    assert profile["hardware"]["device"] == "cpu" and profile["hardware"]["threads"] >= 1
    assert profile["software"]["torch"] and profile["software"]["transformers"]
    model = profile["model"]
    assert model["family"] == "qwen2_5_vl" and model["dtype"] == "float32" and model["dtype_bytes"] == 4
    assert model["modalities"] == ["image", "video"] and model["config"]["tiny"] == "qwen2_5_vl"
    assert profile["config"]["engine"]["block_size"] == profile["language"]["block_size"] == 16
    prompt = profile["frontend"]["prompt"]
    assert prompt["pad_ids"]["image"] in prompt["placeholder_ids"]["image"] and prompt["prefix_ids"]
    json.dumps(profile, allow_nan=False)  # strict JSON


def test_costs_are_positive_and_grow_where_they_must(profile):
    image = profile["encoder"]["image"]
    for key in ("fetch_s", "preprocess_s"):
        assert all(s > 0 for _, s in image[key]["points"])
        assert evaluate(image[key]["fit"], 2e6) >= evaluate(image[key]["fit"], 1e5) > 0
    tower = image["tower_s"]
    one = {"one": 1, "items": 1, "tokens": 60, "tokens_sq": 3600}
    two = {"one": 1, "items": 2, "tokens": 120, "tokens_sq": 7200}
    assert all(p["s"] > 0 for p in tower["points"]) and len(tower["points"]) >= 3
    assert evaluate_features(tower["fit"], two) >= evaluate_features(tower["fit"], one) > 0
    lang = profile["language"]
    for key in ("prefill_s", "decode_s"):
        knots = lang[key]["fit"]["knots"]
        assert [k[0] for k in knots] == sorted(k[0] for k in knots)
        assert all(b[1] >= a[1] > 0 for a, b in zip(knots, knots[1:], strict=False))
        assert all(p[2] > 0 for p in lang[key]["points"])
    assert lang["prefill_s"]["fit"]["attn_s"] >= 0 and lang["decode_s"]["fit"]["ctx_s"] >= 0
    assert piecewise(lang["prefill_s"]["fit"]["knots"], 4096) > piecewise(lang["prefill_s"]["fit"]["knots"], 16)
    assert lang["kv_capacity_tokens"] == 32768 and lang["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 4
    assert lang["mixed_check"] and all(m["measured_s"] > 0 and m["predicted_s"] > 0 for m in lang["mixed_check"])
    assert lang["prepare_s"]["points"]


def test_data_plane_and_parallel(profile):
    for backend in ("nccl", "shm", "zmq"):
        rows = profile["transfer"][backend]["points"]
        assert [r[0] for r in rows] == [65536, 1 << 20] and all(r[1] > 0 for r in rows)
    control = profile["control"]
    assert control["latency_s"] > 0 and control["send_s"] > 0 and control["poll_s"] > 0
    parallel = profile["parallel"]
    assert parallel["source"].startswith("measured") and parallel["allreduce_bw_bytes_per_s"] > 0


@pytest.mark.slow
def test_calibrate_on_a_real_run(profile, tmp_path):
    """A real tiny 1e1p1d job, then ``python -m epd.sim.calibrate`` on it: every stage it went through gets a
    factor, and the calibrated simulation of that same run matches its stages (or says which it cannot)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "epd.run", "+topology=1e1p1d", "device=cpu", f"hydra.run.dir={run}", "logger.quiet=true",
           "workload.num_requests=8", "workload.warmup_requests=1", "workload.request_rate=8", "workload.output_len=8"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    out = tmp_path / "calibrated.json"
    cmd = [sys.executable, "-m", "epd.sim.calibrate", f"profile={path}", f"run={run}", f"out={out}"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    cal = load_profile(out)["calibration"]
    assert set(cal["real_stage_s"]) == {"frontend", "fetch", "preprocess", "tower", "transfer", "prefill",
                                        "kv_transfer", "decode"}  # fmt: skip
    assert all(f > 0 for f in cal["factors"].values()) and cal["run"] == str(run)
    for kind, real in cal["real_stage_s"].items():
        if kind not in cal["clamped"]:
            assert cal["sim_stage_s"][kind] == pytest.approx(real, rel=0.05 if cal["converged"] else 0.5), kind
    assert "factors:" in done.stdout and str(out) in done.stdout
