"""``python -m epd.report``: rows from a sweep directory, labels, the CSV, the markdown and the PNG plots."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from epd.metrics import LoggerConfig, RequestRecord, build_logger
from epd.metrics.phases import summarize_run
from epd.report import load_rows, write_report
from epd.report.plots import latency_figure
from tests.conftest import REPO


def make_records(ttft_s: float, n: int = 4, phase: int = 0, start: float = 0.0) -> list[RequestRecord]:
    out = []
    for i in range(n):
        t = start + i
        out.append(
            RequestRecord(
                id=f"p{phase}-{i}",
                arrival=t,
                phase=phase,
                timestamps={"tokenized": t + 0.01, "encode_end": t + ttft_s / 2, "first_token": t + ttft_s - 0.01},
                token_times=[t + ttft_s + 0.05 * k for k in range(4)],
                output_token_ids=[1, 2, 3, 4],
                num_prompt_tokens=10,
            )
        )
    return out


def write_run(run_dir: Path, config: dict, records: list[RequestRecord], **phases) -> dict:
    """A run directory as epd writes it (the jsonl logger's results.json)."""
    summary = summarize_run(records, duration_s=10.0, slo_ttft_ms=1500.0, **phases)
    summary["peak_memory"] = {"0": {"device": "cpu", "rss_gib": 2.0}, "1": {"device": "cpu", "rss_gib": 3.5}}
    with build_logger(LoggerConfig(), run_dir) as logger:
        logger.log_run(config, summary, records)
    return summary


def config(topology: str, rate: float, **extra) -> dict:
    return {
        "topology": {"name": topology, "instances": [{"role": "encoder"}] * (topology.count("e") + 1)},
        "transfer": {"backend": extra.pop("backend", "shm")},
        "workload": {"request_rate": rate, "num_requests": 4, "seed": 0},
        "run_dir": "/somewhere",
        **extra,
    }


@pytest.fixture
def sweep(tmp_path) -> tuple[Path, dict]:
    """A Hydra-like sweep: 2 topologies x 2 rates in numbered job dirs, plus one phased run."""
    root = tmp_path / "sweep"
    summaries = {}
    job = 0
    for topology, slow in (("1e1p", 2.0), ("2e1p", 1.0)):
        for rate in (0.5, 2.0):
            summaries[(topology, rate)] = write_run(
                root / str(job), config(topology, rate), make_records(ttft_s=slow * rate)
            )
            job += 1
    phased = make_records(0.3, phase=0) + make_records(0.6, phase=1, start=20.0)
    summaries["colocated"] = write_run(
        root / "10", config("colocated", 99.0), phased, phase_starts=[0.0, 20.0], phase_rates=[0.5, 2.0]
    )
    return root, summaries


def test_rows_labels_and_values(sweep):
    root, summaries = sweep
    rows = load_rows(root)
    assert [r["run"] for r in rows] == ["0", "1", "2", "3", "10", "10"]  # natural order, one row per phase
    assert [r["label"] for r in rows] == ["1e1p"] * 2 + ["2e1p"] * 2 + ["colocated"] * 2
    assert [r["request_rate"] for r in rows] == [0.5, 2.0, 0.5, 2.0, 0.5, 2.0]
    row = rows[1]
    summary = summaries[("1e1p", 2.0)]
    assert row["ttft_mean_ms"] == pytest.approx(summary["ttft_ms"]["mean"]) == pytest.approx(4000.0)
    assert row["tpot_p99_ms"] == pytest.approx(50.0)
    assert row["goodput"] == pytest.approx(summary["goodput"]) and row["slo_attainment"] == 0.0
    assert row["peak_mem_gib"] == 3.5 and row["num_completed"] == 4
    assert row["stage_encode_ms"] == pytest.approx(summary["breakdown_ms"]["encode"]["mean"])
    phase_row = rows[5]
    assert phase_row["phase"] == 1 and phase_row["ttft_mean_ms"] == pytest.approx(600.0)
    assert phase_row["slo_attainment"] == 1.0


def test_labels_name_what_differs(tmp_path):
    write_run(tmp_path / "a", config("2e1p", 1.0, backend="shm"), make_records(1.0))
    write_run(tmp_path / "b", config("2e1p", 1.0, backend="zmq"), make_records(1.0))
    write_run(tmp_path / "c", config("2e1p", 2.0, backend="zmq"), make_records(1.0))
    labels = [row["label"] for row in load_rows(tmp_path)]
    assert labels == ["2e1p transfer.backend=shm", "2e1p transfer.backend=zmq", "2e1p transfer.backend=zmq"]
    baseline = tmp_path / "d"
    write_run(baseline, {"topology": {"name": "anything"}}, make_records(1.0))
    results = baseline / "results.json"
    results.write_text(results.read_text().replace('{\n  "config"', '{\n  "label": "transformers",\n  "config"', 1))
    assert [row["label"] for row in load_rows(tmp_path)][-1] == "transformers"


def test_write_report_files(sweep, tmp_path):
    root, _ = sweep
    out = tmp_path / "out"
    written = write_report(root, out)
    assert set(written) == {"csv", "markdown", "ttft", "tpot", "breakdown"}
    with (out / "report.csv").open() as file:
        table = list(csv.DictReader(file))
    assert [r["label"] for r in table] == ["colocated"] * 2 + ["1e1p"] * 2 + ["2e1p"] * 2  # the baseline first
    assert float(table[3]["ttft_mean_ms"]) == pytest.approx(4000.0) and table[3]["status"] == "ok"
    markdown = (out / "report.md").read_text()
    assert "| 1e1p | 2 | 4/4 | 4000.0 |" in markdown
    assert "Goodput and SLO attainment under TTFT <= 1500 ms." in markdown
    assert "## Stage breakdown" in markdown
    for name in ("ttft_vs_rate.png", "tpot_vs_rate.png", "breakdown.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200
            assert len(image.getcolors(1 << 20) or []) > 20  # lines and bars were drawn, not a blank canvas


def test_cli(sweep, tmp_path):
    root, _ = sweep
    proc = subprocess.run(
        [sys.executable, "-m", "epd.report", str(root), "--out", str(tmp_path / "cli"), "--stat", "p99"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| 2e1p | 0.5 |" in proc.stdout and "wrote breakdown:" in proc.stdout
    assert (tmp_path / "cli" / "ttft_vs_rate.png").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "epd.report", str(empty)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "no results.json under" in proc.stderr


def test_missing_job_gets_a_row(sweep, tmp_path):
    """A sweep job that failed has its .hydra/ but no results.json: the report says so in a row."""
    root, _ = sweep
    failed = root / "4" / ".hydra"
    failed.mkdir(parents=True)
    (failed / "overrides.yaml").write_text("- +topology=2e1p\n- workload.request_rate=3.0\n")
    out = tmp_path / "out"
    write_report(root, out)
    with (out / "report.csv").open() as file:
        table = list(csv.DictReader(file))
    assert len(table) == 7
    last = table[-1]
    assert (last["run"], last["status"], last["request_rate"]) == ("4", "no results.json", "3.0")
    assert last["label"] == "job 4: +topology=2e1p workload.request_rate=3.0" and last["ttft_mean_ms"] == ""
    markdown = (out / "report.md").read_text()
    assert "| job 4: +topology=2e1p workload.request_rate=3.0 | 3 | no results.json | - |" in markdown
    assert "**1 job(s) without results.json** (failed or unfinished): 4." in markdown
    assert markdown.count("| job 4") == 1  # a row of the latency table, none in the breakdown table


def test_only_failed_jobs_still_report(tmp_path):
    (tmp_path / "0" / ".hydra").mkdir(parents=True)
    (tmp_path / "0" / ".hydra" / "overrides.yaml").write_text("[]\n")
    rows = load_rows(tmp_path, with_missing=True)
    assert rows == [{"run": "0", "label": "job 0", "status": "no results.json", "request_rate": None}]
    with pytest.raises(ValueError, match="no results.json under"):
        load_rows(tmp_path)


def test_latency_plot_reads_from_zero_with_the_baseline_first():
    """Values spread 500x (once drawn log-scale): the axis is linear from 0; colocated is the first
    line, black and dashed; the legend lies outside the axes."""
    rows = [
        {"label": label, "request_rate": rate, "ttft_mean_ms": ttft}
        for label, scale in (("2e1p", 1.0), ("colocated", 50.0), ("1e1p", 2.0))
        for rate, ttft in ((0.5, 10.0 * scale), (1.0, 100.0 * scale))
    ]
    fig = latency_figure(rows, "ttft")
    ax = fig.axes[0]
    assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0 and ax.get_ylim()[1] >= 5000
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["colocated", "1e1p", "2e1p"]
    assert lines[0].get_linestyle() == "--" and lines[0].get_color() == "black"
    assert all(line.get_linestyle() == "-" and line.get_color() != "black" for line in lines[1:])
    fig.canvas.draw()
    legend, axes_box = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= axes_box.x1  # right of the axes: never over a line
    import matplotlib.pyplot as plt

    plt.close(fig)
