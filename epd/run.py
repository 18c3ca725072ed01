"""``python -m epd.run [overrides]`` / ``torchrun -m epd.run [overrides]``: one experiment, end to end.

Hydra composes ``epd/conf/``; the result is converted once into a typed :class:`~epd.config.RunConfig`
and checked before any process starts, and the whole workload is built and checked in this process
(``workload.jsonl`` in the run directory): a mistake in the config or the workload fails here, in
seconds, with one line naming the key, file and line. Under torchrun every rank lands here and
serves its role; started as a plain process, epd's own launcher starts the topology's ranks and the
frontend (one in-process rank when the topology has a single instance).

A sweep (``python -m epd.run -m +topology=1e1p,2e1p workload.request_rate=0.1,0.3``) runs its jobs
one after another, each in ``<sweep dir>/<job number>/``; a job that fails does not stop the others,
the failed ones are listed at the end and the sweep exits non-zero. ``python -m epd.report <sweep
dir>`` then tabulates and plots them. Exit codes: ``epd.launch.exit_codes``.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from epd.config.schema import register_schemas
from epd.launch import exit_codes

CONF_DIR = str(Path(__file__).resolve().parent / "conf")  # package data: found from any working directory
_FAILED_JOBS: list[str] = []
log = logging.getLogger("epd")


def _run_stamp() -> str:
    """Time stamp of the run directory; under torchrun all ranks agree on rank-first's stamp."""
    stamp = time.strftime("%H-%M-%S")
    from epd.launch.env import under_launcher

    if under_launcher() and int(os.environ["WORLD_SIZE"]) > 1 and "EPD_LAUNCHER_PID" not in os.environ:
        from epd.launch.store import connect_store

        store = connect_store(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]))
        key = f"epd/run_stamp/{os.environ.get('TORCHELASTIC_RUN_ID', '')}"
        stamp = store.compare_set(key, "", stamp).decode()
    return stamp


OmegaConf.register_new_resolver("epd_stamp", _run_stamp, use_cache=True, replace=True)
register_schemas()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(dcfg: DictConfig) -> None:
    code = launch_or_explain(dcfg)
    if code:
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # Hydra records the failure and runs the next job
            job = HydraConfig.get().job
            _FAILED_JOBS.append(f"job {job.num} ({' '.join(job.override_dirname.split(','))}): exit code {code}")
            if len(_FAILED_JOBS) == 1:
                atexit.register(_list_failed_jobs)
            raise RuntimeError(f"epd: sweep job {job.num} failed with exit code {code}")
        sys.exit(code)


def launch_or_explain(dcfg: DictConfig) -> int:
    """``launch``, with a bad config explained in one line (exit code ``BAD_CONFIG``)."""
    try:
        return launch(dcfg)
    except ValueError as exc:
        print(f"epd: error: {exc}", file=sys.stderr)
        return exit_codes.BAD_CONFIG


def _list_failed_jobs() -> None:
    print(f"epd: {len(_FAILED_JOBS)} sweep job(s) failed:", file=sys.stderr)
    for line in _FAILED_JOBS:
        print(f"  {line}", file=sys.stderr)


def launch(dcfg: DictConfig) -> int:
    from epd.config import build_run_config
    from epd.launch.env import context_from_env, under_launcher
    from epd.launch.logs import setup_logging
    from epd.launch.rank import run_rank

    raw = OmegaConf.to_container(dcfg, resolve=True)
    raw["run_dir"] = HydraConfig.get().runtime.output_dir
    if under_launcher():  # torchrun over several nodes: its layout is the job's
        world, local = int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        if local < world:
            raw["launch"] = {
                **raw.get("launch", {}),
                "nnodes": world // local,
                "node_rank": int(os.environ["GROUP_RANK"]),
            }
            if not raw["launch"].get("master_port"):
                raw["launch"]["master_port"] = int(os.environ["MASTER_PORT"])
    cfg = with_defaults(build_run_config(raw))
    cfg = dataclasses.replace(cfg, server=cfg.server.with_key(dict(os.environ)))  # only its hash goes on
    from epd.models import detect_family, resolve_checkpoint

    setup_logging(f"rank{os.environ['RANK']}" if under_launcher() else "launcher", cfg.run_dir, cfg.logger.quiet)
    detect_family(resolve_checkpoint(cfg.model))  # unsupported or missing checkpoints fail here
    config_file = Path(cfg.run_dir) / "epd_config.json"
    world = cfg.topology.world_size

    if under_launcher():  # torchrun: this process is one rank
        ctx = context_from_env()
        if ctx.world_size != world:
            raise ValueError(
                f"topology {cfg.topology.name!r} needs {world} rank(s) but torchrun started {ctx.world_size}: "
                f"use torchrun --nproc-per-node {world} (or plain python -m epd.run, which starts them)"
            )
        if ctx.local_rank == 0:  # one check per host, before any rank of it loads a model
            first = ctx.rank - ctx.local_rank
            check_memory(cfg, ranks_here=range(first, first + (ctx.local_world_size or world)))
        if ctx.rank == 0:
            check_port(cfg)
            prepare_run(cfg, config_file)
        return run_rank(cfg, ctx)

    check_memory(cfg)
    check_port(cfg)
    prepare_run(cfg, config_file)
    if world > 1:
        from epd.launch.spawn import spawn_job

        return spawn_job(cfg, config_file)
    from epd.launch.rank import RankContext, in_process_secret
    from epd.launch.store import serve_store

    store, port = serve_store("127.0.0.1")
    ctx = RankContext(rank=0, world_size=1, local_rank=0, store_host="127.0.0.1", store_port=port)
    return run_rank(cfg, ctx, store=store, secret=in_process_secret())


def with_defaults(cfg):
    """Fill what depends on the run: local media may come from the workload file's folder (unless
    ``media.allowed_dirs`` names folders itself) and always from the run directory (its own media).
    A server reads local media only from the folders ``media.allowed_dirs`` names (none by default)."""
    media = cfg.media
    if cfg.server.enabled:
        return dataclasses.replace(cfg, media=dataclasses.replace(media, allowed_dirs=list(media.allowed_dirs or [])))
    dirs = list(media.allowed_dirs) if media.allowed_dirs is not None else []
    if media.allowed_dirs is None and cfg.workload.name == "file" and cfg.workload.path:
        dirs.append(str(Path(cfg.workload.path).expanduser().absolute().parent))
    run_dir = str(Path(cfg.run_dir).absolute())
    if run_dir not in dirs:
        dirs.append(run_dir)
    return dataclasses.replace(cfg, media=dataclasses.replace(media, allowed_dirs=dirs))


def check_memory(cfg, ranks_here=None) -> None:
    """Refuse a run whose ranks cannot fit this host's memory (``ValueError`` with the numbers)."""
    from epd.models import check_memory as check
    from epd.models import estimate_memory

    check(cfg, ranks_here=ranks_here)
    from epd.launch.logs import FILE_ONLY

    log.info("memory: %s", estimate_memory(cfg, ranks_here=ranks_here).summary(), extra=FILE_ONLY)


def check_port(cfg) -> None:
    """A server's port must be free before any rank loads a model (``ValueError`` naming the key)."""
    if not cfg.server.enabled or cfg.server.port == 0:
        return
    import socket

    with socket.socket(socket.AF_INET6 if ":" in cfg.server.host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((cfg.server.host, cfg.server.port))
        except OSError as exc:
            raise ValueError(
                f"server.port={cfg.server.port} on {cfg.server.host} cannot be used ({exc.strerror}): "
                "pick another port, or server.port=0 for any free one"
            ) from None


def prepare_run(cfg, config_file: Path) -> None:
    """Write the typed config and build and check the whole workload (``workload.jsonl``), before any rank
    has loaded a model; a broken workload raises ``ValueError`` naming file, line and key. A server has
    no workload: only its config is written."""
    from transformers import AutoTokenizer

    from epd.config import save_run_config
    from epd.frontend.job import WORKLOAD_FILE
    from epd.models import resolve_checkpoint
    from epd.workload import build_workload, save_requests

    save_run_config(cfg, config_file)
    if cfg.launch.node_rank != 0 or cfg.server.enabled:  # the workload is the frontend's (node 0); a server has none
        return
    run_dir = Path(cfg.run_dir)
    tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint(cfg.model))
    requests = build_workload(cfg.workload, run_dir / "media", tokenizer=tokenizer)
    save_requests(run_dir / WORKLOAD_FILE, requests)
    bad = [r for r in requests if r.error is not None]
    if bad:
        print(
            f"epd: {len(bad)} of {len(requests)} request(s) are invalid and will fail alone; first: {bad[0].error}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
