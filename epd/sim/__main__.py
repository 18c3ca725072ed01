"""``python -m epd.sim profile=D/profile.json [+topology=T | sim.encoders=E sim.language=L ...] [overrides]``.

The config tree of ``epd.run`` (``conf/sim.yaml`` composes it) plus ``profile`` and ``sim.*``;
writes ``results.json`` (marked ``summary.simulated``) into the run directory.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from epd.run import CONF_DIR  # registers the schema nodes and the run-directory resolver


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="sim")
def main(dcfg: DictConfig) -> None:
    from epd.profile.schema import load_profile
    from epd.sim import build_sim_config, load_processor, simulate

    try:
        raw = OmegaConf.to_container(dcfg, resolve=True)
        raw["run_dir"] = HydraConfig.get().runtime.output_dir
        cfg = build_sim_config(raw)
        profile = load_profile(cfg.profile)
        simulate(cfg, profile, _processor(profile, load_processor))
    except ValueError as exc:
        print(f"epd.sim: error: {exc}", file=sys.stderr)
        sys.exit(2)


def _processor(profile: dict, load):
    from epd.config import from_dict
    from epd.models.config import ModelConfig

    model = profile["model"].get("config")
    return load(from_dict(ModelConfig, model)) if model else None


if __name__ == "__main__":
    main()
