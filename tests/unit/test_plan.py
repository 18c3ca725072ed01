"""epd.plan on a constructed case with one obviously best shape."""

from __future__ import annotations

import json
import math

from epd.plan import build_plan_config, candidates, format_plan, run_plan
from epd.plan.config import PlanOptions
from epd.profile.synthetic import make_profile

IMAGE_360P_TOKENS = math.ceil(640 * 360 / 784)


def test_candidates_stay_within_the_budget():
    cands = candidates(PlanOptions(gpu_budget=4, tp=[1, 2]))
    assert {c.gpus for c in cands} == {1, 2, 3, 4}
    assert all(c.gpus <= 4 for c in cands)
    labels = {c.label for c in cands}
    assert {
        "4 colocated enc=round_robin",
        "3 E + 1 L enc=round_robin",
        "1 E + 1 P + 1 D",
        "2 E + 1 L (tp2) enc=round_robin",
    } <= labels
    assert "1 E + 2 L (tp2)" not in labels  # 5 GPUs


def test_planner_picks_the_encoder_heavy_shape(tmp_path):
    """The tower takes 100 ms a request, a decode step 5 ms: 25 req/s need three encoders (TTFT <= 500 ms),
    and colocated instances interleave 100 ms tower calls with their decode steps (TPOT <= 10 ms fails), so
    only 3 E + 1 L serves it within 4 GPUs."""
    per_token = 0.1 / IMAGE_360P_TOKENS  # tower calls batch items: make the work per token
    profile = make_profile(device="NVIDIA H100", tower_per_token_s=per_token, prefill_s=0.005, decode_s=0.005)
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    raw = {
        "model": {"tiny": "qwen2_5_vl"}, "profile": str(path), "run_dir": str(tmp_path / "plan"),
        "workload": {"slo_ttft_ms": 500.0, "slo_tpot_ms": 10.0, "num_requests": 10, "output_len": 16},
        "plan": {"rates": [25.0], "gpu_budget": 4, "requests_per_rate_s": 10.0},
    }  # fmt: skip
    cfg = build_plan_config(raw)
    rows = run_plan(cfg, profile, progress=False)
    best = rows[0]
    assert (best["encoders"], best["language"], best["gpus"]) == (3, 1, 4), [r["config"] for r in rows[:3]]
    assert best["meets_slo"] and not any(
        r["meets_slo"] for r in rows[1:] if r["gpus"] <= 4 and r["config"] != best["config"]
    )
    text = format_plan(rows, cfg, profile)
    assert "Best: **3 E + 1 L enc=round_robin on 4 GPU(s)**" in text
