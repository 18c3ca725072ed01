"""``python -m epd.run [overrides]`` / ``torchrun -m epd.run [overrides]``: one experiment, end to end.

Hydra composes ``epd/conf/``; the result is converted once into a typed :class:`~epd.config.RunConfig`
and checked before any process starts. Under torchrun every rank lands here and serves its role;
started as a plain process, epd spawns the topology's ranks itself (one in-process rank when the
topology has a single instance).

A sweep (``python -m epd.run -m +topology=1e1p,2e1p workload.request_rate=0.1,0.3``) runs its jobs
one after another, each in ``<sweep dir>/<job number>/`` and each spawning its own ranks; a job
that fails does not stop the others, and the sweep exits non-zero at the end if any failed.
``python -m epd.report <sweep dir>`` then tabulates and plots them.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from epd.config.schema import register_schemas

CONF_DIR = str(Path(__file__).resolve().parent / "conf")  # package data: found from any working directory


def _run_stamp() -> str:
    """Time stamp of the run directory; under torchrun all ranks agree on rank-first's stamp."""
    stamp = time.strftime("%H-%M-%S")
    from epd.launch.env import under_launcher

    if under_launcher() and int(os.environ["WORLD_SIZE"]) > 1:
        import torch.distributed as dist

        store = dist.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timedelta(minutes=2)
        )
        key = f"epd/run_stamp/{os.environ.get('TORCHELASTIC_RUN_ID', '')}"
        stamp = store.compare_set(key, "", stamp).decode()
    return stamp


OmegaConf.register_new_resolver("epd_stamp", _run_stamp, use_cache=True, replace=True)
register_schemas()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(dcfg: DictConfig) -> None:
    try:
        code = launch(dcfg)
    except ValueError as exc:
        print(f"epd: error: {exc}", file=sys.stderr)
        code = 2
    if code:
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # Hydra records the failure and runs the next job
            raise RuntimeError(f"epd: sweep job {HydraConfig.get().job.num} failed with exit code {code}")
        sys.exit(code)


def launch(dcfg: DictConfig) -> int:
    from epd.config import build_run_config, save_run_config
    from epd.launch.env import context_from_env, setup_logging, under_launcher
    from epd.launch.rank import RankContext, run_rank
    from epd.models import detect_family, resolve_checkpoint

    raw = OmegaConf.to_container(dcfg, resolve=True)
    raw["run_dir"] = HydraConfig.get().runtime.output_dir
    cfg = build_run_config(raw)
    detect_family(resolve_checkpoint(cfg.model))  # unsupported or missing checkpoints fail here
    config_file = Path(cfg.run_dir) / "epd_config.json"
    world = cfg.topology.world_size

    if under_launcher():  # torchrun: this process is one rank
        ctx = context_from_env()
        if ctx.world_size != world:
            raise ValueError(
                f"topology {cfg.topology.name!r} needs {world} rank(s) but torchrun started {ctx.world_size}: "
                f"use torchrun --nproc-per-node {world} (or plain python -m epd.run, which spawns them)"
            )
        setup_logging(ctx.rank)
        if ctx.rank == 0:
            save_run_config(cfg, config_file)
        return run_rank(cfg, ctx)

    save_run_config(cfg, config_file)
    if world > 1:
        from epd.launch.spawn import spawn_ranks

        return spawn_ranks(world, config_file)
    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", 0, is_master=True, timeout=timedelta(minutes=10))
    ctx = RankContext(rank=0, world_size=1, local_rank=0, store_host="127.0.0.1", store_port=store.port)
    return run_rank(cfg, ctx, store=store)


if __name__ == "__main__":
    main()
