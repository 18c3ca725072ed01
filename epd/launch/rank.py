"""What every rank runs: set up its place in the job, serve its roles, clean up however it ends.

A rank learns where it sits from its launcher (epd's own, torchrun, or none for a one-rank job run in
process), takes the job secret (``epd.launch.secret``), joins the process group, starts the frontend
if it is the rank that owns it, and serves (``epd.launch.server.RankServer``) until the frontend says
stop. SIGTERM (from its launcher, or because its launcher died) ends it the same way as an error:
its own shm segments are removed and the frontend, if it owns it, is given time to write results.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from epd.config import RunConfig
from epd.language.lockstep import tensor_parallel_for
from epd.launch import exit_codes
from epd.launch.device import rank_device
from epd.launch.secret import SECRET_ENV, new_secret, parse_secret, secret_from_env, torchrun_secret
from epd.launch.store import connect_store
from epd.metrics.memory import report_peak_memory, reset_peak_memory
from epd.net import reachable_address

log = logging.getLogger("epd")


@dataclass(frozen=True, kw_only=True)
class RankContext:
    """Where this rank sits in the job; filled in by the launcher (torchrun's or epd's)."""

    rank: int
    world_size: int
    local_rank: int
    store_host: str
    store_port: int
    local_world_size: int = 0
    """Ranks on this node (0: all of them, a single-node job)."""
    launcher_pid: int | None = None
    """The process that started this rank (epd's launcher or torchrun's agent): when it is gone, the rank
    ends itself. None: no launcher (a one-rank job served in the user's own process)."""
    supervised: bool = False
    """Started by epd's own launcher, which also runs the frontend and reports lost ranks."""

    @property
    def multi_node(self) -> bool:
        return 0 < self.local_world_size < self.world_size


def run_rank(cfg: RunConfig, ctx: RankContext, store: dist.Store | None = None, secret: bytes | None = None) -> int:
    """Serve this rank's roles until the frontend says stop; returns the rank's exit code."""
    from epd.launch.server import FrontendLost, RankServer

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if ctx.launcher_pid is not None:
        _die_with(ctx.launcher_pid)
    device = rank_device(cfg.device, cfg.topology, ctx.rank, ctx.local_rank)
    if device.type == "cpu" and ctx.world_size > 1:  # ranks sharing the cores: oversubscribed BLAS threads crawl
        per_node = ctx.local_world_size or ctx.world_size
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_node))
    reset_peak_memory(device)
    if store is None:
        store = connect_store(ctx.store_host, ctx.store_port)
    if secret is None:
        secret = _job_secret(ctx, store)
    bind_host = resolve_bind_host(cfg, ctx.multi_node, store)
    if device.type == "cpu" and not ctx.multi_node:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo's sockets on loopback for a one-node job
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.PrefixStore("epd_pg", store), rank=ctx.rank, world_size=ctx.world_size)
    tp = tensor_parallel_for(cfg.topology, ctx.rank, device)  # every rank joins every instance's group
    frontend = None
    if ctx.rank == 0 and not ctx.supervised:
        frontend = _start_frontend(cfg, ctx, secret)
        if cfg.server.enabled:  # a server drains on SIGTERM/Ctrl-C, then tells the ranks to stop
            _forward_signals(frontend)
    server = None
    served = False
    try:
        server = RankServer(cfg, ctx, device, store, secret, bind_host, frontend, tp)
        store.set(f"epd/ready/{ctx.rank}", "1")
        server.serve()
        served = True
        report_peak_memory(store, ctx.rank, device)  # read by the frontend for results.json
    except KeyboardInterrupt:  # Ctrl-C of a job served in this process: the frontend writes the results
        if frontend is None:
            raise
    except FrontendLost as exc:
        log.error("%s", exc)
        return exit_codes.JOB_FAILED
    finally:
        if server is not None:
            server.close()
        if frontend is not None and frontend.poll() is None and not served:
            frontend.send_signal(signal.SIGTERM)  # it finishes its results on SIGTERM; give it the time to
        if frontend is not None:
            code = _wait_frontend(frontend, cfg.launch.shutdown_grace_s * 6)
        if served and dist.is_initialized():  # after a failure peers may be gone: the exit frees it
            dist.destroy_process_group()
    return code if frontend is not None else exit_codes.OK


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(exit_codes.TERMINATED)


def _forward_signals(frontend: subprocess.Popen) -> None:
    """SIGTERM and SIGINT go on to the frontend, and this rank keeps serving until it says stop."""

    def forward(signum, frame) -> None:
        if frontend.poll() is None:
            frontend.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)


def _die_with(launcher_pid: int) -> None:
    """SIGTERM this process when its launcher dies (the heartbeat thread also watches, once serving)."""
    from epd.launch.spawn import die_with_parent

    die_with_parent()
    if os.getppid() != launcher_pid:  # it died before the line above took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _job_secret(ctx: RankContext, store: dist.Store) -> bytes:
    if ctx.supervised:
        secret = secret_from_env()
        if secret is None:
            raise RuntimeError(f"epd's launcher started this rank without {SECRET_ENV}")
        return secret
    return torchrun_secret(store, ctx.rank, ctx.world_size, ctx.multi_node)


def resolve_bind_host(cfg: RunConfig, multi_node: bool, store: dist.Store) -> str:
    """Where this process's sockets bind: ``launch.bind_address``, or for ``auto`` loopback on one node
    and the address on the route to the store's host across nodes."""
    if cfg.launch.bind_address != "auto":
        return cfg.launch.bind_address
    return reachable_address(store) if multi_node or cfg.launch.nnodes > 1 else "127.0.0.1"


def _start_frontend(cfg: RunConfig, ctx: RankContext, secret: bytes) -> subprocess.Popen:
    """The frontend runs in its own process beside rank 0 (torchrun, or a one-rank job) and dies with it."""
    from epd.launch.spawn import die_with_parent

    config_file = Path(cfg.run_dir) / "epd_config.json"
    cmd = [sys.executable, "-m", "epd.frontend", str(config_file), ctx.store_host, str(ctx.store_port)]
    env = {**os.environ, SECRET_ENV: secret.hex(), "EPD_LAUNCHER_PID": str(os.getpid())}
    return subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent)


def _wait_frontend(frontend: subprocess.Popen, timeout_s: float) -> int:
    try:
        code = frontend.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        log.error("the frontend did not finish within %.0f s: killing it", timeout_s)
        frontend.kill()
        frontend.wait()
        return exit_codes.JOB_FAILED
    return code if code >= 0 else exit_codes.JOB_FAILED


def in_process_secret() -> bytes:
    """The secret of a one-rank job served in the user's process (no launcher to hand one over)."""
    return secret_from_env() or parse_secret(new_secret())
