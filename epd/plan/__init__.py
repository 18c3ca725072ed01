"""``epd.plan``: search topologies and policies for goodput per GPU under SLOs, by simulation (``docs/simulator.md``)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

from epd.plan.config import PlanOptions, PlanRunConfig, build_plan_config
from epd.plan.search import Candidate, candidates, evaluate, ranked

COLUMNS = ("config", "gpus", "rate", "goodput", "goodput_per_gpu", "slo_attainment", "ttft_mean_ms", "ttft_p90_ms",
           "tpot_mean_ms", "tpot_p90_ms", "throughput")  # fmt: skip


def run_plan(cfg: PlanRunConfig, profile: dict, processor: Any = None, progress: bool = True) -> list[dict]:
    """Simulate every candidate at every rate; return the rows, best first within each rate."""
    cands = candidates(cfg.plan)
    if not cands:
        raise ValueError("no configuration fits plan.gpu_budget / plan.min_gpus / plan.shapes / plan.tp")
    out_dir = Path(cfg.base.run.run_dir)
    rows, start = [], time.perf_counter()
    for rate in cfg.plan.rates:
        for i, cand in enumerate(cands):
            run_dir = out_dir / "runs" / f"r{rate:g}" / f"{i:03d}"
            rows.append(evaluate(cfg, cand, rate, profile, processor, run_dir))
            if progress:
                r = rows[-1]
                print(f"  [{len(rows)}/{len(cands) * len(cfg.plan.rates)}] {rate:g} req/s  {cand.label:<40} "
                      f"goodput/GPU {r['goodput_per_gpu']:.3f}  attain {r['slo_attainment'] or 0:.0%}  "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    return [row for rate in cfg.plan.rates for row in ranked([r for r in rows if r["rate"] == rate])]


def format_plan(rows: list[dict], cfg: PlanRunConfig, profile: dict) -> str:
    """The markdown table: per rate, the ``top`` configurations, and the sentence naming the best."""
    wl, opts = cfg.base.run.workload, cfg.plan
    head = [
        f"# epd.plan: {profile['model'].get('name')} on {profile['hardware'].get('device')} (simulated)",
        "",
        f"workload {wl.name}: {wl.image_count} x {wl.resolution} images, {wl.input_len} text tokens in, "
        f"{wl.output_len} out; SLO TTFT <= {wl.slo_ttft_ms} ms, TPOT <= {wl.slo_tpot_ms} ms; a configuration "
        f"serves a rate when >= {opts.min_attainment:.0%} of requests meet the SLO; GPU budget {opts.gpu_budget}.",
    ]
    lines = list(head)
    for rate in opts.rates:
        at = [r for r in rows if r["rate"] == rate]
        best = next((r for r in at if r["meets_slo"]), None)
        lines += ["", f"## {rate:g} req/s", ""]
        lines.append(
            f"Best: **{best['config']} on {best['gpus']} GPU(s)**: goodput {best['goodput']:.3f} req/s "
            f"({best['goodput_per_gpu']:.3f} per GPU), TTFT {best['ttft_mean_ms']:.0f} ms, TPOT "
            f"{best['tpot_mean_ms']:.1f} ms."
            if best
            else "No configuration within the budget meets the SLO target."
        )
        lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        for row in at[: opts.top]:
            lines.append("| " + " | ".join(_cell(row[c]) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def write_plan(rows: list[dict], text: str, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "plan.md").write_text(text)
    (out_dir / "plan.json").write_text(json.dumps(rows, indent=1))
    with (out_dir / "plan.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return "-" if value is None else str(value)


__all__ = ["Candidate", "PlanOptions", "PlanRunConfig", "build_plan_config", "candidates", "format_plan", "run_plan",
           "write_plan"]  # fmt: skip
