"""The configurations ``epd.plan`` simulates, and the table of how each did."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from epd.plan.config import PlanOptions, PlanRunConfig
from epd.sim import simulate
from epd.sim.config import SimOptions, SimRunConfig


@dataclass(frozen=True, kw_only=True)
class Candidate:
    """One configuration: instance counts, tp, policies."""

    colocated: int = 0
    encoders: int = 0
    language: int = 0
    prefill: int = 0
    decode: int = 0
    tp: int = 1
    encoder_policy: str = "round_robin"
    decode_policy: str = "round_robin"

    @property
    def gpus(self) -> int:
        return self.colocated + self.encoders + (self.language + self.prefill + self.decode) * self.tp

    @property
    def label(self) -> str:
        parts = [f"{n} {name}" for n, name in ((self.colocated, "colocated"), (self.encoders, "E"),
                 (self.language, "L"), (self.prefill, "P"), (self.decode, "D")) if n]  # fmt: skip
        text = " + ".join(parts) + (f" (tp{self.tp})" if self.tp > 1 else "")
        if self.encoders > 1 or self.colocated > 1:
            text += f" enc={self.encoder_policy}"
        if self.decode > 1:
            text += f" dec={self.decode_policy}"
        return text


def candidates(opts: PlanOptions) -> list[Candidate]:
    """Every configuration within ``opts``' GPU budget, shapes, tp degrees and policies."""
    out: list[Candidate] = []
    lo, hi = opts.min_gpus, opts.gpu_budget
    if "colocated" in opts.shapes:
        out += [Candidate(colocated=n, encoder_policy=p) for n in range(1, hi + 1) for p in _encp(opts, n)]
    for tp in opts.tp:
        if "e_l" in opts.shapes:
            for e in range(1, hi):
                for lang in range(1, (hi - e) // tp + 1):
                    out += [Candidate(encoders=e, language=lang, tp=tp, encoder_policy=p) for p in _encp(opts, e)]
        if "e_p_d" in opts.shapes:
            for e in range(1, hi):
                for p in range(1, (hi - e) // tp):
                    for d in range(1, (hi - e) // tp - p + 1):
                        out += [
                            Candidate(encoders=e, prefill=p, decode=d, tp=tp, encoder_policy=ep, decode_policy=dp)
                            for ep in _encp(opts, e)
                            for dp in (opts.decode_policies if d > 1 else opts.decode_policies[:1])
                        ]
    return [c for c in out if lo <= c.gpus <= hi]


def _encp(opts: PlanOptions, encoders: int) -> list[str]:
    return opts.encoder_policies if encoders > 1 else opts.encoder_policies[:1]


def config_for(cfg: PlanRunConfig, cand: Candidate, rate: float, run_dir: Path) -> SimRunConfig:
    """The simulated run of ``cand`` at ``rate``."""
    base, opts = cfg.base, cfg.plan
    sim = dataclasses.replace(base.sim, colocated=cand.colocated, encoders=cand.encoders, language=cand.language,
                              prefill=cand.prefill, decode=cand.decode, tp=cand.tp)  # fmt: skip
    wl = base.run.workload
    n = max(wl.num_requests, math.ceil(rate * opts.requests_per_rate_s))
    workload = dataclasses.replace(wl, request_rate=rate, num_requests=n, phase_rates=[], phase_requests=[])
    scheduler = dataclasses.replace(base.run.scheduler, encoder_policy=cand.encoder_policy,
                                    decode_policy=cand.decode_policy)  # fmt: skip
    logger = dataclasses.replace(base.run.logger, quiet=True)
    run = dataclasses.replace(base.run, workload=workload, scheduler=scheduler, logger=logger, run_dir=str(run_dir))
    return SimRunConfig(run=run, profile=base.profile, sim=SimOptions(**dataclasses.asdict(sim)))


def evaluate(cfg: PlanRunConfig, cand: Candidate, rate: float, profile: dict, processor: Any, run_dir: Path) -> dict:
    """Simulate ``cand`` at ``rate``: its row of the plan's table."""
    summary = simulate(config_for(cfg, cand, rate, run_dir), profile, processor, write=cfg.plan.keep_runs)
    goodput = summary["goodput"] or 0.0
    return {
        "config": cand.label,
        **dataclasses.asdict(cand),
        "gpus": cand.gpus,
        "rate": rate,
        "requests": summary["num_requests"],
        "goodput": goodput,
        "goodput_per_gpu": goodput / cand.gpus,
        "slo_attainment": summary["slo_attainment"],
        "meets_slo": (summary["slo_attainment"] or 0.0) >= cfg.plan.min_attainment,
        "throughput": summary["request_throughput"],
        "ttft_mean_ms": summary["ttft_ms"]["mean"],
        "ttft_p90_ms": summary["ttft_ms"]["p90"],
        "tpot_mean_ms": summary["tpot_ms"]["mean"],
        "tpot_p90_ms": summary["tpot_ms"]["p90"],
        "sim_wall_s": summary["sim"]["wall_s"],
    }


def ranked(rows: list[dict]) -> list[dict]:
    """Best first: configurations that meet the SLO target, by goodput per GPU, then fewer GPUs, lower TTFT."""
    return sorted(rows, key=lambda r: (not r["meets_slo"], -r["goodput_per_gpu"], r["gpus"], r["ttft_mean_ms"] or 0))
