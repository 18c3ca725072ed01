"""A Hydra sweep on CPU with the tiny checkpoint: each job spawns its ranks, logs to W&B offline, and
``python -m epd.report`` turns the sweep directory into a CSV, a markdown table and plots."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from tests.conftest import REPO


def run_module(module: str, *args: str, env_extra: dict | None = None, timeout: int = 420):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env_extra or {})})
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_sweep_runs_every_job_then_report(tmp_path):
    pytest.importorskip("wandb")
    sweep = tmp_path / "sweep"
    home = {f"WANDB_{k}_DIR": str(tmp_path / "wandb-home" / k) for k in ("CONFIG", "CACHE", "DATA")}
    proc = run_module(
        "epd.run",
        "-m",
        "+topology=colocated,1e1p",
        "workload.output_len=4,0",  # jobs 1 and 3 are refused by config validation; the others still run
        "workload.num_requests=2",
        "workload.phase_rates=[40,inf]",  # two loads in each job: 4 report rows from 2 jobs
        "workload.slo_ttft_ms=60000",
        "logger=wandb",
        f"hydra.sweep.dir={sweep}",
        env_extra=home,
    )
    assert proc.returncode != 0 and "workload.output_len=0" in proc.stderr  # the sweep reports its failures
    assert not (sweep / "1" / "results.json").exists() and not (sweep / "3" / "results.json").exists()
    assert "[epd] 4/4 |" in proc.stderr  # the progress bar, one line per tenth when not a terminal
    results = {}
    for job, topology in (("0", "colocated"), ("2", "1e1p")):
        data = json.loads((sweep / job / "results.json").read_text())
        assert data["config"]["topology"]["name"] == topology
        summary = data["summary"]
        assert summary["num_completed"] == 4 and [p["num_completed"] for p in summary["phases"]] == [2, 2]
        assert summary["slo_attainment"] == 1.0
        assert set(summary["peak_memory"]) == {str(r) for r in range(len(data["config"]["topology"]["instances"]))}
        assert "encode" in summary["breakdown_ms"] and "decode" in summary["breakdown_ms"]
        results[topology] = data
        # the offline W&B run of this job holds the same summary
        from tests.unit.test_wandb import read_offline_run

        logged = read_offline_run(sweep / job)
        assert logged["summary"]["ttft_ms/mean"] == pytest.approx(summary["ttft_ms"]["mean"])
        assert logged["summary"]["phases/1/num_completed"] == 2
        assert logged["config"]["workload"]["phase_rates"] == [40.0, None]  # strict JSON: inf is null
        assert len(logged["tables"]["requests"]) == 4

    report = run_module("epd.report", str(sweep), timeout=120)
    assert report.returncode == 0, report.stderr
    with (sweep / "report.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [(r["label"], r["request_rate"], r["status"]) for r in rows[:4]] == [
        ("colocated", "40.0", "ok"),  # the baseline first
        ("colocated", "inf", "ok"),
        ("1e1p", "40.0", "ok"),
        ("1e1p", "inf", "ok"),
    ]
    assert [(r["run"], r["status"]) for r in rows[4:]] == [("1", "no results.json"), ("3", "no results.json")]
    assert "workload.output_len=0" in rows[4]["label"]  # the failed jobs' overrides say which they were
    colocated_inf = results["colocated"]["summary"]["phases"][1]
    assert float(rows[1]["ttft_mean_ms"]) == pytest.approx(colocated_inf["ttft_ms"]["mean"])
    assert "| colocated | 40 | 2/2 |" in (sweep / "report.md").read_text()
    for name in ("ttft_vs_rate.png", "tpot_vs_rate.png", "breakdown.png"):
        with Image.open(sweep / name) as image:
            assert image.format == "PNG" and image.width > 300
