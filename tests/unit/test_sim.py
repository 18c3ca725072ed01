"""epd.sim on cases whose outcome is computed by hand, from profiles of round, made-up costs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from epd.profile.synthetic import make_profile
from epd.sim import build_sim_config, simulate

IMAGE_360P_TOKENS = math.ceil(640 * 360 / 784)  # no processor given: scheduler.pixels_per_token sizes images
COSTS = dict(tokenize_s=0.002, fetch_s=0.010, preprocess_s=0.020, tower_s=0.100, prefill_s=0.050, decode_s=0.010,
             latency_s=0.001)  # fmt: skip


def run_sim(tmp_path: Path, profile: dict, **overrides) -> tuple[dict, list]:
    """Simulate with ``overrides`` (dotted keys); return the summary and the measured records."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    raw: dict = {"model": {"tiny": "qwen2_5_vl"}, "profile": str(path), "run_dir": str(tmp_path / "run"),
                 "logger": {"quiet": True}}  # fmt: skip
    for key, value in overrides.items():
        node = raw
        *head, last = key.split(".")
        for part in head:
            node = node.setdefault(part, {})
        node[last] = value
    cfg = build_sim_config(raw)
    summary = simulate(cfg, write=True)
    rows = [json.loads(line) for line in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    return summary, rows


def one_request(**extra) -> dict:
    return {"workload.num_requests": 1, "workload.output_len": 16, **extra}


def test_one_request_colocated_ttft_is_the_sum_of_the_stages(tmp_path):
    summary, rows = run_sim(tmp_path, make_profile(**COSTS), **one_request())
    c = COSTS
    ttft = c["tokenize_s"] + c["latency_s"] + c["fetch_s"] + c["preprocess_s"] + c["tower_s"] + c["prefill_s"]
    ttft += c["latency_s"]  # the first token's message to the frontend
    assert summary["simulated"] is True
    assert summary["ttft_ms"]["mean"] == pytest.approx(ttft * 1e3)
    assert summary["tpot_ms"]["mean"] == pytest.approx(c["decode_s"] * 1e3)
    assert summary["e2e_ms"]["mean"] == pytest.approx((ttft + 15 * c["decode_s"]) * 1e3)
    assert rows[0]["num_prompt_tokens"] == 14 + 32 + 5 + IMAGE_360P_TOKENS + 2  # template, words, span


def test_work_booked_per_process(tmp_path):
    """results.json's ``sim.work_s``: the profiled work of the measured phase, per device and process."""
    c = COSTS
    summary, _ = run_sim(tmp_path, make_profile(**COSTS), **one_request())
    work = summary["sim"]["work_s"]["cpu"]  # a CPU profile: every process shares one host's cores
    assert work["rank0"] == pytest.approx(
        c["fetch_s"] + c["preprocess_s"] + c["tower_s"] + c["prefill_s"] + 15 * c["decode_s"]
    )
    assert work["frontend"] == pytest.approx(c["tokenize_s"])  # make_profile's control messages cost nothing
    split, _ = run_sim(tmp_path / "s", make_profile(**COSTS), **one_request(**{"sim.encoders": 1, "sim.language": 1}))
    work = split["sim"]["work_s"]["cpu"]
    assert work["rank0"] == pytest.approx(c["fetch_s"] + c["preprocess_s"] + c["tower_s"])
    assert work["rank1"] == pytest.approx(c["prefill_s"] + 15 * c["decode_s"])
    # a GPU profile: the decode steps run fast-forwarded (a GPU to itself) and are booked all the same
    gpu, _ = run_sim(tmp_path / "g", make_profile(**COSTS, device="cuda"), **one_request())
    work = gpu["sim"]["work_s"]
    assert work["gpu0"] == pytest.approx({"rank0": c["tower_s"] + c["prefill_s"] + 15 * c["decode_s"]})
    assert work["host0"] == pytest.approx({"rank0": c["fetch_s"] + c["preprocess_s"], "frontend": c["tokenize_s"]})


def test_one_request_1e1p_adds_the_embeddings_transfer(tmp_path):
    per_byte = 1e-9
    profile = make_profile(**COSTS, transfer_fixed_s=0.003, transfer_per_byte_s=per_byte, hidden_size=64, dtype_bytes=2)
    colocated, _ = run_sim(tmp_path / "c", profile, **one_request())
    split, rows = run_sim(tmp_path / "s", profile, **one_request(**{"sim.encoders": 1, "sim.language": 1}))
    transfer = 0.003 + IMAGE_360P_TOKENS * 64 * 2 * per_byte
    assert split["ttft_ms"]["mean"] - colocated["ttft_ms"]["mean"] == pytest.approx(transfer * 1e3)
    ts = rows[0]["timestamps"]
    assert ts["transfer_end"] - ts["transfer_start"] == pytest.approx(transfer)


# ---- queues with known service times (the encoder's tower, one item per call, is the only server) ----

QUEUE = dict(tower_s=0.1)
ONE_ITEM_CALLS = {"encoder.max_batch_items": 1, "encoder.cache_device_bytes": 0, "encoder.cache_host_bytes": 0,
                  "workload.output_len": 1}  # fmt: skip


def test_fixed_rate_overloaded_queue_matches_d_d_1(tmp_path):
    """Arrivals every 80 ms, 100 ms of service: request i waits i * 20 ms (D/D/1 over capacity)."""
    n, gap, service = 20, 0.08, 0.1
    trace = tmp_path / "trace.txt"
    tmp_path.mkdir(parents=True, exist_ok=True)
    trace.write_text("".join(f"{i * gap}\n" for i in range(n)))
    summary, rows = run_sim(tmp_path, make_profile(**QUEUE), **ONE_ITEM_CALLS,
                            **{"workload.num_requests": n, "workload.arrival": "trace", "workload.trace_path": str(trace)})  # fmt: skip
    waits = [r["token_times"][0] - r["arrival"] - service for r in sorted(rows, key=lambda r: r["arrival"])]
    assert waits == pytest.approx([i * (service - gap) for i in range(n)], abs=1e-9)
    assert summary["ttft_ms"]["mean"] == pytest.approx((service + (n - 1) / 2 * (service - gap)) * 1e3)


def test_poisson_queue_mean_wait_matches_m_d_1(tmp_path):
    """Poisson arrivals at half the tower's rate: mean wait rho / (2 mu (1 - rho)) = 50 ms (M/D/1)."""
    rate, service, n = 5.0, 0.1, 3000
    summary, _ = run_sim(tmp_path, make_profile(**QUEUE), **ONE_ITEM_CALLS,
                         **{"workload.num_requests": n, "workload.request_rate": rate, "sim.token_times": "ends"})  # fmt: skip
    rho = rate * service
    wait = rho / (2 / service * (1 - rho))
    assert summary["ttft_ms"]["mean"] == pytest.approx((wait + service) * 1e3, rel=0.08)


# ---- prefill / decode split --------------------------------------------------------------------------


def test_pd_split_adds_the_kv_transfer_before_the_second_token(tmp_path):
    per_byte = 1e-9
    profile = make_profile(**COSTS, transfer_fixed_s=0.003, transfer_per_byte_s=per_byte)
    whole, rows_whole = run_sim(tmp_path / "l", profile, **one_request(**{"sim.encoders": 1, "sim.language": 1}))
    split, rows = run_sim(tmp_path / "pd", profile,
                          **one_request(**{"sim.encoders": 1, "sim.prefill": 1, "sim.decode": 1}))  # fmt: skip
    assert split["ttft_ms"]["mean"] == pytest.approx(whole["ttft_ms"]["mean"])  # the first token leaves from prefill
    kv = 0.003 + rows[0]["num_prompt_tokens"] * make_profile()["language"]["kv_bytes_per_token"] * per_byte
    gap = rows[0]["token_times"][1] - rows[0]["token_times"][0]
    assert gap == pytest.approx(kv + COSTS["decode_s"])  # the KV cache moves, then decode steps
    assert split["e2e_ms"]["mean"] - whole["e2e_ms"]["mean"] == pytest.approx(kv * 1e3)
    ts = rows[0]["timestamps"]
    assert ts["kv_transfer_end"] - ts["kv_transfer_start"] == pytest.approx(kv)
    assert (
        rows[0]["kv_transfer_bytes"] == rows[0]["num_prompt_tokens"] * make_profile()["language"]["kv_bytes_per_token"]
    )


# ---- preemption, and runs of decode steps ------------------------------------------------------------


def test_preemption_under_a_tiny_kv_cache(tmp_path):
    """Two 32-token prompts, 48 outputs each, 6 blocks of 16: the newest is preempted once and recomputed."""
    summary, rows = run_sim(tmp_path, make_profile(prefill_s=0.01, decode_s=0.001),
                            **{"workload.num_requests": 2, "workload.image_count": 0, "workload.input_len": 13,
                               "workload.output_len": 48, "engine.kv_tokens": 96})  # fmt: skip
    by_id = {r["id"]: r for r in rows}
    assert by_id["req-0"]["num_prompt_tokens"] == 32
    assert [by_id[f"req-{i}"]["num_preemptions"] for i in range(2)] == [0, 1]
    assert summary["num_completed"] == 2
    assert by_id["req-1"]["token_times"][-1] > by_id["req-0"]["token_times"][-1]
    # both prefill together and get their first token after one step
    assert [by_id[f"req-{i}"]["token_times"][0] for i in range(2)] == pytest.approx([0.01, 0.01])


def gpu_profile() -> dict:
    profile = make_profile(device="NVIDIA H100", tokenize_s=0.001, fetch_s=0.004, preprocess_s=0.006, tower_s=0.02,
                           tower_per_token_s=1e-5, prefill_s=0.02, prefill_per_token_s=2e-5, decode_s=0.005,
                           decode_per_seq_s=5e-5, latency_s=1e-4, kv_capacity_tokens=6000)  # fmt: skip
    profile["language"]["decode_s"]["fit"]["ctx_s"] = 2e-8
    profile["language"]["prefill_s"]["fit"]["attn_s"] = 1e-9
    return profile


@pytest.mark.parametrize("topology", [{"sim.encoders": 2, "sim.language": 1},
                                      {"sim.encoders": 1, "sim.prefill": 1, "sim.decode": 1}])  # fmt: skip
def test_fast_forward_gives_the_same_records_as_step_by_step(tmp_path, topology):
    """Runs of identical decode steps as one event change nothing (the KV cache is small enough that
    admission waits for blocks and sequences are preempted)."""
    load = {"workload.num_requests": 40, "workload.request_rate": 25.0, "workload.output_len": 96,
            "workload.random_count": True, "workload.image_count": 3, **topology}  # fmt: skip
    fast, fast_rows = run_sim(tmp_path / "ff", gpu_profile(), **load)
    slow, slow_rows = run_sim(tmp_path / "step", gpu_profile(), **load, **{"sim.fast_forward": False})
    assert fast["sim"]["events"] < slow["sim"]["events"]
    for a, b in zip(fast_rows, slow_rows, strict=True):
        assert a["id"] == b["id"] and a["num_preemptions"] == b["num_preemptions"]
        assert a["token_times"] == pytest.approx(b["token_times"], abs=1e-9)
    assert sum(r["num_preemptions"] for r in slow_rows) > 0, "the case was meant to preempt"


@pytest.mark.timeout(120)
def test_prefilled_requests_wait_on_the_decode_side_for_blocks(tmp_path):
    """As in LanguageEngine: the prefill instance frees its blocks at the hand-off; a decode instance
    whose cache holds two of these requests (64 blocks, 29 each) keeps the others waiting in its
    scheduler (``kv_pending``) until blocks free up, and the rank waits for messages meanwhile."""
    summary, rows = run_sim(tmp_path, gpu_profile(),
                            **{"workload.num_requests": 30, "workload.image_count": 0, "workload.input_len": 400,
                               "workload.output_len": 32, "engine.kv_tokens": 1024, "sim.encoders": 1,
                               "sim.prefill": 1, "sim.decode": 2, "scheduler.decode_policy": "least_loaded"})  # fmt: skip
    assert summary["num_completed"] == 30
    assert all(len(r["token_times"]) == 32 for r in rows)
    waits = sorted(r["token_times"][1] - r["timestamps"]["kv_transfer_end"] for r in rows)
    assert waits[0] < 0.02  # the first ones found blocks at once (one decode step, ~5 ms)
    assert waits[-1] > 0.3  # later ones waited for two requests' worth of decode (~31 steps each) or more


# ---- how shared devices slow work -------------------------------------------------------------------


@pytest.mark.parametrize("anticipate, tower_s", [(False, 0.04), (True, 0.08)])
def test_time_slicing_slows_the_work_that_started_first_too(anticipate, tower_s):
    """A language rank steps back to back (10 ms each) on one GPU; another process's 40 ms tower call then
    starts. Time-slicing gives each half the GPU: the tower takes 80 ms and each step during it 20 ms.
    ``booked`` charges only the steps; ``anticipate`` expects the steps to go on and charges the tower too."""
    from epd.sim.events import Device

    gpu, engine, tower = Device("gpu0", 1.0, anticipate), object(), object()
    now = 0.0
    for _ in range(10):
        now += gpu.run(now, 0.01, engine)
    assert now == pytest.approx(0.1)  # one process alone: its own earlier steps never slow it
    assert gpu.run(now, 0.04, tower) == pytest.approx(tower_s)
    assert gpu.run(now, 0.01, engine) == pytest.approx(0.02)
    assert Device("gpu1", 1.0, anticipate).run(0.0, 0.04, tower) == pytest.approx(0.04)  # nothing else ran
