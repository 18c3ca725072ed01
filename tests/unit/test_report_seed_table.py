"""experiments/seed_table: the budget plan, the replay of the one-at-a-time baseline, the anchor-shaped table."""

from __future__ import annotations

import json
import sys

import pytest

from epd.metrics import LoggerConfig, RequestRecord, build_logger
from epd.metrics.phases import summarize_run
from epd.workload import WorkloadRequest
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "experiments" / "seed_table"))
plan_mod = pytest.importorskip("plan")


def test_budget_plan_fits_and_keeps_rates():
    rates = [0.1, 0.3, 0.6]
    plan = plan_mod.budget_plan(rates, 480.0, jobs=3, job_overhead_s=45.0, drain_s=10.0)
    assert plan.rates == rates and plan.reduced
    assert plan.total_s <= 480.0
    # equal arrival spans: counts grow with the rate; one more request at the lowest rate would not fit
    assert plan.requests[0] <= plan.requests[1] <= plan.requests[2]
    bigger = plan_mod.Plan(**{**plan.__dict__, "requests": [plan.requests[0] + 1, *plan.requests[1:]], "notes": []})
    assert bigger.total_s > plan.total_s
    assert "REDUCED seed_table" in plan.describe() and "64 per rate" in plan.describe()
    roomy = plan_mod.budget_plan(rates, 1e6, jobs=3, job_overhead_s=45.0, drain_s=10.0)
    assert roomy.requests == [64, 64, 64] and not roomy.reduced
    tight = plan_mod.budget_plan(rates, 100.0, jobs=3, job_overhead_s=45.0, drain_s=10.0, min_requests=3)
    assert tight.requests == [3, 3, 3] and "warning" in tight.describe()


def test_baseline_replay_is_fcfs_one_at_a_time():
    baseline = pytest.importorskip("baseline")  # needs transformers' streamer base class
    requests = [
        WorkloadRequest(id=f"r{i}", messages=[], max_tokens=3, arrival_s=t, phase=p)
        for i, (t, p) in enumerate([(0.0, 0), (1.0, 0), (10.0, 0), (0.0, 1), (0.5, 1)])
    ]
    profiles = [{"load_s": 0.1, "preprocess_s": 0.2, "token_s": [1.0, 1.5, 2.0], "num_prompt_tokens": 7}]
    records, phase_starts, end = baseline.replay(requests, profiles)
    # phase 0: r0 served 0..2, r1 waits until 2 (TTFT 2 s), r2 arrives at 10 to an idle server
    assert [r.token_times[0] - r.arrival for r in records[:3]] == pytest.approx([1.0, 2.0, 1.0])
    assert phase_starts == [0.0, 12.0] and end == pytest.approx(16.0)
    assert [r.arrival for r in records[3:]] == pytest.approx([12.0, 12.5])
    assert records[4].token_times[0] == pytest.approx(15.0)  # behind r3, which ends at 14
    assert records[1].timestamps["tokenized"] == pytest.approx(2.0)  # the wait shows as the queue stage


def write_seed_table_runs(out) -> None:
    """What run.py leaves in OUT for three configurations, two rates each (as load phases)."""
    for name, ttft in (("2e1p_2gpu", 1.0), ("1e1p_2gpu", 2.0), ("colocated", 3.0)):
        records = []
        for phase in (0, 1):
            records += [
                RequestRecord(
                    id=f"{phase}-{i}",
                    arrival=10.0 * phase + i,
                    phase=phase,
                    token_times=[10.0 * phase + i + ttft * (phase + 1) + 0.02 * k for k in range(3)],
                    output_token_ids=[1, 2, 3],
                )
                for i in range(2)
            ]
        summary = summarize_run(records, 20.0, phase_starts=[0.0, 10.0], phase_rates=[0.1, 0.6])
        config = {"topology": {"name": name, "instances": []}, "workload": {"request_rate": 0.1}}
        with build_logger(LoggerConfig(), out / name) as logger:
            logger.log_run(config, summary, records)


def test_seed_table_markdown(tmp_path):
    plot = pytest.importorskip("plot")
    write_seed_table_runs(tmp_path)
    (tmp_path / "plan.json").write_text(json.dumps({"requests": [2, 2], "reduced": True}))
    table = plot.seed_table_markdown(tmp_path, plot.plan_note(tmp_path))
    assert "REDUCED: 2/2 requests per rate" in table
    assert "| rate (req/s) | colocated | 1e1p_2gpu | 2e1p_2gpu |" in table
    assert "| 0.6 | 6000 / 20.0 [2/2] | 4000 / 20.0 [2/2] | 2000 / 20.0 [2/2] |" in table


def test_seed_table_figure_reads_from_zero_with_the_baseline_first(tmp_path):
    plot = pytest.importorskip("plot")
    write_seed_table_runs(tmp_path)
    fig = plot.seed_table_figure(tmp_path)
    fig.canvas.draw()
    legend_box = fig.legends[0].get_window_extent()
    for ax in fig.axes:
        assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == ["colocated", "1e1p_2gpu", "2e1p_2gpu"]
        assert lines[0].get_linestyle() == "--" and lines[0].get_color() == "black"
        assert legend_box.x0 >= ax.get_window_extent().x1  # the legend sits right of both panels
    path = plot.plot_seed_table(tmp_path, tmp_path / "seed_table.png")
    assert path.stat().st_size > 10_000


def test_seed_table_config_composes_the_published_shape():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from epd.config import build_run_config
    from epd.run import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        dcfg = compose("config", ["+experiment=seed_table", "+topology=2e1p_2gpu"], return_hydra_config=True)
    assert dict(dcfg.hydra.sweeper.params) == {
        "+topology": "colocated,1e1p_2gpu,2e1p_2gpu",
        "workload.request_rate": "0.1,0.3,0.6",
    }
    raw = OmegaConf.to_container(dcfg, resolve=False)
    raw.pop("hydra")
    cfg = build_run_config(OmegaConf.to_container(OmegaConf.create(raw), resolve=True))
    wl = cfg.workload
    assert (wl.image_count, wl.resolution, wl.input_len, wl.output_len, wl.num_requests) == (8, "1080p", 128, 256, 64)
    assert wl.ignore_eos and wl.arrival == "poisson" and wl.warmup_requests == 1
    assert cfg.model.shape == "qwen2_5_vl:7b" and cfg.model.random_init and cfg.model.dtype == "bfloat16"
    assert cfg.transfer.backend == "shm"
    assert [(i.role, i.gpu) for i in cfg.topology.instances] == [("encoder", 1), ("encoder", 1), ("language", 0)]
