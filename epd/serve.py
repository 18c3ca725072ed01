"""``python -m epd.serve [overrides]`` / ``torchrun -m epd.serve``: serve OpenAI-compatible clients.

The same Hydra config and launch path as ``epd.run`` (``epd/conf/serve.yaml`` is ``config.yaml`` with
``server.enabled=true``): the topology's ranks start once, and the frontend process runs the HTTP
server (``epd.server``) instead of a workload until SIGTERM or Ctrl-C, then drains the requests in
flight for ``server.drain_timeout_s`` and writes results.json from every request it served. The API
key comes from ``server.api_key`` or the environment variable ``server.api_key_env`` names (read
here, once). Under torchrun, torchrun stops every rank on SIGTERM at once: to drain, send SIGTERM to
the frontend process (its pid is in ``<run dir>/server.json``).
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from epd.launch import exit_codes
from epd.run import CONF_DIR, launch_or_explain


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="serve")
def main(dcfg: DictConfig) -> None:
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        print("epd: error: python -m epd.serve serves one job: drop -m/--multirun", file=sys.stderr)
        sys.exit(exit_codes.BAD_CONFIG)
    code = launch_or_explain(dcfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
