"""What ``python -m epd.plan`` searches (``plan.*``), beside a simulated run's config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from epd.config import from_dict
from epd.sim.config import SimRunConfig, build_sim_config

SHAPES = ("colocated", "e_l", "e_p_d")


@dataclass(kw_only=True)
class PlanOptions:
    """The planner's search space and how it ranks configurations."""

    rates: list[float] = field(default_factory=lambda: [1.0])
    """Arrival rates (req/s) each configuration is simulated at (Poisson unless ``workload.arrival`` says else)."""
    gpu_budget: int = 8
    """Most GPUs a configuration may use (an encoder takes one, a language / prefill / decode instance ``tp``)."""
    min_gpus: int = 1
    """Fewest GPUs a configuration may use."""
    shapes: list[str] = field(default_factory=lambda: list(SHAPES))
    """Families searched: ``colocated`` (N replicas), ``e_l`` (encoders + language instances), ``e_p_d``
    (encoders + prefill + decode instances)."""
    tp: list[int] = field(default_factory=lambda: [1])
    """Tensor-parallel degrees of language / prefill / decode instances."""
    encoder_policies: list[str] = field(default_factory=lambda: ["round_robin"])
    """Encoder-assignment policies tried where there are two encoders or more."""
    decode_policies: list[str] = field(default_factory=lambda: ["round_robin"])
    """Decode-instance policies tried where there are two decode instances or more."""
    requests_per_rate_s: float = 60.0
    """Each simulation sends ``max(workload.num_requests, rate * requests_per_rate_s)`` requests: about this
    many seconds of arrivals at every rate, so a configuration that cannot keep up shows it."""
    min_attainment: float = 0.9
    """A configuration serves a rate when at least this share of its requests meets the SLOs."""
    top: int = 10
    """Rows printed per rate."""
    keep_runs: bool = False
    """Write every simulation's results.json under ``<run dir>/runs/`` (for epd.report)."""

    def __post_init__(self) -> None:
        if not self.rates or any(not r > 0 for r in self.rates):
            raise ValueError(f"plan.rates={self.rates}: give one or more rates > 0 (req/s)")
        if self.gpu_budget < 1 or not 1 <= self.min_gpus <= self.gpu_budget:
            raise ValueError("plan.gpu_budget must be >= 1 and plan.min_gpus in [1, gpu_budget]")
        unknown = set(self.shapes) - set(SHAPES)
        if unknown or not self.shapes:
            raise ValueError(f"plan.shapes={self.shapes}: choose from {', '.join(SHAPES)}")
        if any(t < 1 for t in self.tp):
            raise ValueError(f"plan.tp={self.tp}: degrees >= 1")
        if not 0 < self.min_attainment <= 1:
            raise ValueError(f"plan.min_attainment={self.min_attainment}: a share in (0, 1]")


@dataclass(kw_only=True)
class PlanRunConfig:
    base: SimRunConfig
    plan: PlanOptions


def build_plan_config(raw: dict[str, Any]) -> PlanRunConfig:
    plan = from_dict(PlanOptions, dict(raw.get("plan") or {}), "plan")
    base = build_sim_config(raw, extra_keys=("plan",))
    wl = base.run.workload
    if wl.slo_ttft_ms is None and wl.slo_tpot_ms is None:
        raise ValueError("epd.plan ranks by goodput: set workload.slo_ttft_ms and/or workload.slo_tpot_ms")
    return PlanRunConfig(base=base, plan=plan)
