"""The simulator's command line and its inputs: ``python -m epd.sim`` composes the run's config tree,
writes results that ``epd.report`` reads, and workloads are built without writing media."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from epd.profile.synthetic import make_profile
from epd.report.collect import load_rows
from epd.workload import WorkloadConfig, build_workload

REPO = Path(__file__).resolve().parents[2]


def test_workload_without_media_carries_sizes_and_writes_nothing(tmp_path):
    cfg = WorkloadConfig(name="random_image", num_requests=3, image_count=2, resolution="720p", request_rate=2.0)
    hinted = build_workload(cfg, tmp_path / "media", write_media=False)
    assert not (tmp_path / "media").exists()
    part = hinted[0].messages[0]["content"][0]["image_url"]
    assert part["width"] == 1280 and part["height"] == 720 and part["url"].endswith("1280x720.jpg")
    real = build_workload(cfg, tmp_path / "media2")  # what epd.run gets: files, no hints
    assert set(real[0].messages[0]["content"][0]["image_url"]) == {"url"}
    assert Path(real[0].messages[0]["content"][0]["image_url"]["url"]).is_file()
    assert [r.arrival_s for r in hinted] == [r.arrival_s for r in real]


def test_cli_writes_results_the_report_reads(tmp_path):
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps(make_profile(tower_s=0.02, prefill_s=0.01, decode_s=0.002, latency_s=1e-4)))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "epd.sim", f"profile={profile}", "+topology=2e1p", "workload.num_requests=6",
           "workload.request_rate=20", "scheduler=least_loaded", f"hydra.run.dir={out}", "logger.quiet=true"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'kernels'}", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["summary"]["simulated"] is True and results["summary"]["sim"]["topology"] == "2e1p"
    assert (
        results["config"]["profile"] == str(profile)
        and results["config"]["scheduler"]["encoder_policy"] == "least_loaded"
    )
    assert len(results["requests"]) == 6 and {i["encoder"] for r in results["requests"] for i in r["items"]} == {0, 1}
    rows = load_rows(out)
    assert rows[0]["topology"] == "2e1p" and rows[0]["num_completed"] == 6 and rows[0]["ttft_mean_ms"] > 0


def test_cli_refuses_a_missing_profile(tmp_path):
    cmd = [sys.executable, "-m", "epd.sim", f"profile={tmp_path / 'nope.json'}", f"hydra.run.dir={tmp_path}"]
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'kernels'}", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "python -m epd.profile" in done.stderr


def test_every_sim_option_can_be_set_on_the_command_line():
    """sim.yaml declares every ``SimOptions`` field (Hydra refuses a key its struct lacks)."""
    import dataclasses

    import yaml

    from epd.sim.config import SimOptions

    declared = yaml.safe_load((REPO / "epd" / "conf" / "sim.yaml").read_text())["sim"]
    assert sorted(f.name for f in dataclasses.fields(SimOptions)) == sorted(declared)
    assert SimOptions(**{k: v for k, v in declared.items() if k != "max_sim_s"}) == SimOptions()  # same defaults
