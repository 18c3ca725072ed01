"""``epd.sim``: a discrete-event simulation of a whole epd job from a measured profile, driving epd's
own policies, encoder role, scheduler and block manager on a simulated clock (``docs/simulator.md``)."""

from __future__ import annotations

from typing import Any

from epd.profile.schema import load_profile
from epd.sim.config import SimOptions, SimRunConfig, build_sim_config
from epd.sim.results import summarize_sim, write_results
from epd.sim.simulation import Simulation, load_processor


def simulate(cfg: SimRunConfig, profile: dict | None = None, processor: Any = None, write: bool = True) -> dict:
    """Simulate the run ``cfg`` describes; return its summary (and write results.json unless ``write`` is False)."""
    profile = profile or load_profile(cfg.profile)
    sim = Simulation(cfg, profile, processor)
    records, facts = sim.run()
    summary = summarize_sim(cfg, sim, records, facts)
    if write:
        write_results(cfg, sim, records, summary)
    return summary


__all__ = ["SimOptions", "SimRunConfig", "Simulation", "build_sim_config", "load_processor", "simulate"]
