"""``python -m epd.plan profile=D/profile.json workload.slo_ttft_ms=4000 plan.rates=[2] plan.gpu_budget=8 ...``.

Simulates every configuration of the search space (``epd.plan.config.PlanOptions``) at every rate,
prints the best by goodput per GPU and writes plan.md / plan.csv / plan.json into the run directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from epd.run import CONF_DIR  # registers the schema nodes and the run-directory resolver


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="plan")
def main(dcfg: DictConfig) -> None:
    from epd.plan import build_plan_config, format_plan, run_plan, write_plan
    from epd.profile.schema import load_profile
    from epd.sim import load_processor
    from epd.sim.__main__ import _processor

    try:
        raw = OmegaConf.to_container(dcfg, resolve=True)
        raw["run_dir"] = HydraConfig.get().runtime.output_dir
        cfg = build_plan_config(raw)
        profile = load_profile(cfg.base.profile)
        rows = run_plan(cfg, profile, _processor(profile, load_processor))
    except ValueError as exc:
        print(f"epd.plan: error: {exc}", file=sys.stderr)
        sys.exit(2)
    text = format_plan(rows, cfg, profile)
    write_plan(rows, text, Path(cfg.base.run.run_dir))
    print(text, flush=True)


if __name__ == "__main__":
    main()
