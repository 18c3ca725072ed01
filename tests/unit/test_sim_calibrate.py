"""epd.sim.calibrate: a profile fitted to a run recovers the costs that run was made with.

The "real" run here is itself simulated from a profile of round costs (A); calibration starts from a
profile whose costs are off by known factors (B) and must find those factors and then reproduce A's
results. A real run calibrates the same way (experiments/sim_validation runs it for real).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from epd.metrics.records import load_records
from epd.profile.synthetic import make_profile
from epd.sim.calibrate import FACTOR_RANGE, _parse, calibrate, calibrate_at_loads, stage_means
from epd.sim.costs import calibration_factors
from tests.unit.test_sim import run_sim

TRUE = dict(tokenize_s=0.002, fetch_s=0.010, preprocess_s=0.020, tower_s=0.030, prefill_s=0.040, decode_s=0.010,
            latency_s=0.001, transfer_fixed_s=0.003, transfer_per_byte_s=1e-9)  # fmt: skip
OFF = {"frontend": 2.0, "fetch": 0.5, "preprocess": 1.5, "tower": 3.0, "transfer": 0.25, "prefill": 0.5, "decode": 2.0}
"""The true cost / profile B's cost of each kind of work."""
PD_RUN = {"sim.encoders": 1, "sim.prefill": 1, "sim.decode": 1, "workload.num_requests": 30,
          "workload.request_rate": 5.0, "workload.output_len": 16, "workload.image_count": 2}  # fmt: skip


def off_profile() -> dict:
    t = TRUE
    return make_profile(tokenize_s=t["tokenize_s"] / OFF["frontend"], fetch_s=t["fetch_s"] / OFF["fetch"],
                        preprocess_s=t["preprocess_s"] / OFF["preprocess"], tower_s=t["tower_s"] / OFF["tower"],
                        prefill_s=t["prefill_s"] / OFF["prefill"], decode_s=t["decode_s"] / OFF["decode"],
                        latency_s=t["latency_s"], transfer_fixed_s=t["transfer_fixed_s"] / OFF["transfer"],
                        transfer_per_byte_s=t["transfer_per_byte_s"] / OFF["transfer"])  # fmt: skip


def test_calibration_recovers_the_factors_and_the_results(tmp_path):
    real, _ = run_sim(tmp_path / "real", make_profile(**TRUE), **PD_RUN)
    raw, _ = run_sim(tmp_path / "raw", off_profile(), **PD_RUN)
    assert abs(raw["ttft_ms"]["mean"] / real["ttft_ms"]["mean"] - 1) > 0.1  # the off profile is visibly wrong

    fitted = calibrate(off_profile(), tmp_path / "real" / "run", log=lambda _: None)
    assert fitted["calibration"]["converged"] is True and fitted["calibration"]["clamped"] == []
    factors = fitted["calibration"]["factors"]
    for kind, true in OFF.items():
        assert factors[kind] == pytest.approx(true, rel=0.03), kind
    # the KV cache moves over the same backend: its own factor, found from the kv_transfer stage
    assert factors["kv_transfer"] == pytest.approx(OFF["transfer"], rel=0.05)

    again, _ = run_sim(tmp_path / "cal", fitted, **PD_RUN)
    for key in ("ttft_ms", "tpot_ms", "e2e_ms"):
        assert again[key]["mean"] == pytest.approx(real[key]["mean"], rel=0.02), key


def test_stage_means_of_a_run(tmp_path):
    run_sim(tmp_path, make_profile(**TRUE), **{**PD_RUN, "workload.num_requests": 1, "workload.image_count": 1})
    stages = stage_means(load_records(tmp_path / "run"))
    assert stages["fetch"] == pytest.approx(TRUE["fetch_s"])
    assert stages["preprocess"] == pytest.approx(TRUE["preprocess_s"])
    assert stages["tower"] == pytest.approx(TRUE["tower_s"])
    assert stages["prefill"] == pytest.approx(TRUE["prefill_s"])
    # TPOT: the KV cache moves between the first token and the second, then 15 decode steps
    assert stages["decode"] == pytest.approx((stages["kv_transfer"] + 15 * TRUE["decode_s"]) / 15)
    kv_bytes = rows_of(tmp_path)[0]["kv_transfer_bytes"]
    assert kv_bytes > 0
    assert stages["kv_transfer"] == pytest.approx(TRUE["transfer_fixed_s"] + kv_bytes * TRUE["transfer_per_byte_s"])
    assert stages["frontend"] == pytest.approx(TRUE["tokenize_s"] + TRUE["latency_s"])


def rows_of(path) -> list[dict]:
    return [json.loads(line) for line in (path / "run" / "records.jsonl").read_text().splitlines()]


def test_a_stage_the_profile_cannot_reach_is_reported_clamped(tmp_path):
    """A tower 100x slower than profiled: the factor stops at FACTOR_RANGE's top and says so."""
    run_sim(tmp_path / "real", make_profile(**{**TRUE, "tower_s": 3.0}), **{**PD_RUN, "workload.num_requests": 4})
    logs: list[str] = []
    fitted = calibrate(make_profile(**TRUE), tmp_path / "real" / "run", log=logs.append)
    cal = fitted["calibration"]
    assert cal["converged"] is False and cal["clamped"] == ["tower"]
    assert cal["factors"]["tower"] == FACTOR_RANGE[1]
    assert "not converged" in logs[-1] and "tower" in logs[-1]
    assert len(logs) < 9  # it stops once only the clamped stage is off, not after every pass


def test_cli_values_read_as_hydra_would():
    _, sim = _parse(["profile=p", "run=r", "sim.num_gpus=1", "sim.records=none", "sim.contention=anticipate",
                     "sim.fast_forward=False", "sim.cpu_cores=.5", "sim.shared_host=true", "sim.tokenize=exact",
                     "sim.host_cores=null"])  # fmt: skip
    assert sim == {"num_gpus": 1, "records": "none", "contention": "anticipate", "fast_forward": False,
                   "cpu_cores": 0.5, "shared_host": True, "tokenize": "exact", "host_cores": None}  # fmt: skip
    with pytest.raises(ValueError, match="profile=, run="):
        _parse(["profile=p", "run=r", "speed=2"])


def test_bad_factors_are_refused():
    with pytest.raises(ValueError, match="unknown factor"):
        calibration_factors({"calibration": {"factors": {"gpu": 2.0}}})
    with pytest.raises(ValueError, match="fetch"):
        calibration_factors({"calibration": {"factors": {"fetch": -1}}})
    assert calibration_factors({})["tower"] == 1.0


def test_cli_writes_a_calibrated_profile_and_names_a_bad_run(tmp_path):
    run_sim(tmp_path / "real", make_profile(**TRUE), **{**PD_RUN, "workload.num_requests": 4})
    prof = tmp_path / "off.json"
    prof.write_text(json.dumps(off_profile()))
    out = tmp_path / "cal.json"
    cmd = [
        sys.executable,
        "-m",
        "epd.sim.calibrate",
        f"profile={prof}",
        f"run={tmp_path / 'real' / 'run'}",
        f"out={out}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["calibration"]["factors"]["tower"] == pytest.approx(3.0, rel=0.05)
    bad = subprocess.run([*cmd[:4], f"run={tmp_path}", f"out={out}"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no epd_config.json or results.json" in bad.stderr


def test_a_calibration_used_with_other_device_sharing_warns_once(caplog):
    from epd.sim.config import SimOptions
    from epd.sim.costs import CostModel

    profile = make_profile()
    profile["calibration"] = {"factors": {"decode": 1.5}, "sim": {"num_gpus": 1, "contention": "anticipate"}}
    backend = next(iter(profile["transfer"]))
    with caplog.at_level("WARNING", logger="epd.sim"):
        CostModel(profile, SimOptions(num_gpus=1), backend)  # as calibrated: nothing to say
        assert not caplog.records
        for _ in range(3):
            costs = CostModel(profile, SimOptions(num_gpus=8), backend)
    assert len(caplog.records) == 1 and "sim.num_gpus=8 (calibrated with 1)" in caplog.records[0].getMessage()
    assert costs.factors["decode"] == 1.5 and costs.factors["tower"] == 1.0


def test_a_calibration_at_two_loads_gives_each_load_its_factors(tmp_path):
    """The "real" job's tower costs 1.5x more at the high rate (contention that grows with load): calibrated
    on both runs, a simulation at each rate takes that rate's factor, and one between them a factor between."""
    split = {"sim.encoders": 1, "sim.language": 1, "workload.num_requests": 30, "workload.output_len": 16,
             "workload.image_count": 2}  # fmt: skip
    low, high = {**split, "workload.request_rate": 2.0}, {**split, "workload.request_rate": 12.0}
    real_low, _ = run_sim(tmp_path / "low", make_profile(**TRUE), **low)
    real_high, _ = run_sim(tmp_path / "high", make_profile(**{**TRUE, "tower_s": 1.5 * TRUE["tower_s"]}), **high)
    fitted = calibrate_at_loads(
        off_profile(), [tmp_path / "high" / "run", tmp_path / "low" / "run"], log=lambda _: None
    )
    cal = fitted["calibration"]
    (l0, p0), (l1, p1) = [(p["load"], p["factors"]) for p in cal["points"]]
    assert 0 < l0 < l1 and cal["run"][0].endswith(str(tmp_path / "low" / "run"))  # ordered by load
    assert p0["tower"] == pytest.approx(OFF["tower"], rel=0.03)
    assert p1["tower"] == pytest.approx(1.5 * OFF["tower"], rel=0.03)
    assert cal["factors"] == p0  # (the busy run's transfer stage waits on a loop: it may stop 2% off)
    assert cal["converged"] == all(p["converged"] for p in cal["points"])
    for rate, real in ((2.0, real_low), (12.0, real_high)):
        again, _ = run_sim(tmp_path / f"again{rate:g}", fitted, **{**split, "workload.request_rate": rate})
        assert again["sim"]["calibration"]["factors"]["tower"] == pytest.approx(
            (p0 if rate == 2.0 else p1)["tower"], rel=0.02
        )
        assert again["ttft_ms"]["mean"] == pytest.approx(real["ttft_ms"]["mean"], rel=0.03), rate
    mid, _ = run_sim(tmp_path / "mid", fitted, **{**split, "workload.request_rate": 6.0})
    assert l0 < mid["sim"]["calibration"]["load"] < l1
    assert p0["tower"] < mid["sim"]["calibration"]["factors"]["tower"] < p1["tower"]


def test_factors_between_and_beyond_the_points():
    from epd.sim.costs import calibration_points, factors_at

    profile = {"calibration": {"points": [{"load": 0.6, "factors": {"tower": 3.0}}, {"load": 0.2, "factors": {}}]}}
    points = calibration_points(profile)
    assert [load for load, _ in points] == [0.2, 0.6]
    assert factors_at(points, 0.4)["tower"] == pytest.approx(2.0)
    assert factors_at(points, 0.0)["tower"] == 1.0 and factors_at(points, 5.0)["tower"] == 3.0  # no extrapolation
    assert factors_at(points, 0.4)["decode"] == 1.0
    with pytest.raises(ValueError, match=r"points\[1\].load"):
        calibration_points({"calibration": {"points": [{"load": 0.1}, {"load": "high"}]}})
