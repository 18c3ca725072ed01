"""``python -m epd.profile hydra.run.dir=D [model=...] [device=...] [profile.quick=true]``: writes D/profile.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from epd.run import CONF_DIR  # registers the schema nodes and the run-directory resolver


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="profile")
def main(dcfg: DictConfig) -> None:
    from epd.profile import run_profile
    from epd.profile.config import build_profile_config

    try:
        raw = OmegaConf.to_container(dcfg, resolve=True)
        raw["run_dir"] = HydraConfig.get().runtime.output_dir
        cfg = build_profile_config(raw)
        profile = run_profile(cfg)
    except ValueError as exc:
        print(f"epd.profile: error: {exc}", file=sys.stderr)
        sys.exit(2)
    out = Path(cfg.run.run_dir) / "profile.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(profile, indent=1))
    print(f"epd.profile: wrote {out} ({profile['duration_s']:.0f} s, {profile['hardware']['device']})", flush=True)


if __name__ == "__main__":
    main()
