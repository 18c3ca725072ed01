"""``epd.sim``: a discrete-event simulation of a whole epd job from a measured profile, driving epd's
own policies, encoder role, scheduler and block manager on a simulated clock (``docs/simulator.md``)."""

from __future__ import annotations

from typing import Any

from epd.profile.schema import load_profile
from epd.sim.config import SimOptions, SimRunConfig, build_sim_config
from epd.sim.costs import calibration_points
from epd.sim.results import summarize_sim, write_results
from epd.sim.simulation import Simulation, load_alone, load_processor


def simulate(cfg: SimRunConfig, profile: dict | None = None, processor: Any = None, write: bool = True) -> dict:
    """Simulate the run ``cfg`` describes; return its summary (and write results.json unless ``write`` is False)."""
    profile = profile or load_profile(cfg.profile)
    # factors that move with the load: first, how busy is this run?
    load = load_alone(cfg, profile, processor) if calibration_points(profile) else None
    sim = Simulation(cfg, profile, processor, load)
    records, facts = sim.run()
    summary = summarize_sim(cfg, sim, records, facts)
    if load is not None:
        summary["sim"]["calibration"] = {
            "load": load,
            "factors": {k: round(v, 4) for k, v in sim.costs.factors.items()},
        }
    if write:
        write_results(cfg, sim, records, summary)
    return summary


__all__ = ["SimOptions", "SimRunConfig", "Simulation", "build_sim_config", "load_processor", "simulate"]
