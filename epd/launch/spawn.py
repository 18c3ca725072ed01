"""epd's own launcher: ``python -m epd.run`` starts a job's ranks and its frontend and watches them.

It serves the job's store on 127.0.0.1, draws the job secret and hands it to its children by
environment, and starts every rank (``python -m epd.launch.worker``) and the frontend
(``python -m epd.frontend``) in sessions of their own, so Ctrl-C in the terminal reaches only the
launcher, which passes it to the frontend: the frontend writes every finished result, tells the
ranks to stop and exits with the job's code. Children die with the launcher (``PR_SET_PDEATHSIG``
and a parent watch), so even a SIGKILLed launcher leaves nothing behind.

When a rank ends before the frontend told it to stop, the launcher tells the frontend
(``PeerLost``): a lost encoder's items go to the other encoders and the run goes on; a lost
language rank ends the job with its finished results kept. At the end it removes whatever shm
segments of the job are left and kills any process still there after ``launch.shutdown_grace_s``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from epd.config import RunConfig
from epd.launch import exit_codes
from epd.launch.exit_codes import describe_exit
from epd.launch.secret import SECRET_ENV, job_id, new_secret, parse_secret, secret_from_env
from epd.launch.store import connect_store, serve_store
from epd.net import reachable_address
from epd.protocol import FRONTEND, Channel, PeerLost, job_roles, launcher_name
from epd.protocol.auth import Rejected, seal_value
from epd.transfer.cleanup import remove_job_segments

log = logging.getLogger("epd")

POLL_S = 0.05
EXITED_KEY = "epd/exited/{rank}"
"""Store key the launcher sets when a rank ends unasked (sealed): the frontend reads it while it waits
for the ranks to come up."""


def spawn_job(cfg: RunConfig, config_file: Path) -> int:
    """Run the job's ranks on this node (and its frontend on node 0); returns the job's exit code."""
    return Supervisor(cfg, config_file).run()


def node_ranks(cfg: RunConfig) -> list[int]:
    """The ranks this node runs: the job's ranks split evenly over ``launch.nnodes``, node 0 first."""
    launch, world = cfg.launch, cfg.topology.world_size
    if world % launch.nnodes:
        raise ValueError(
            f"topology {cfg.topology.name!r} has {world} ranks, which launch.nnodes={launch.nnodes} nodes cannot "
            "share evenly: pick a node count that divides it"
        )
    per = world // launch.nnodes
    return list(range(launch.node_rank * per, (launch.node_rank + 1) * per))


class Supervisor:
    def __init__(self, cfg: RunConfig, config_file: Path) -> None:
        self.cfg = cfg
        self.config_file = config_file
        launch = cfg.launch
        self.multi_node = launch.nnodes > 1
        self.head = launch.node_rank == 0  # node 0 runs the store and the frontend
        self.local = node_ranks(cfg)
        if self.multi_node:
            secret = secret_from_env()
            if secret is None:
                raise ValueError(
                    f"a multi-node job needs {SECRET_ENV} set to the same secret on every node; make one with "
                    "`python -c 'import secrets; print(secrets.token_hex(32))'`"
                )
            self.secret_hex, self.secret = secret.hex(), secret
            self.store_host = launch.master_addr
            if self.head:
                bind = launch.bind_address if launch.bind_address != "auto" else launch.master_addr
                self.store, self.port = serve_store(bind, launch.master_port)
            else:
                self.store, self.port = connect_store(launch.master_addr, launch.master_port), launch.master_port
        else:
            self.secret_hex = new_secret()
            self.secret = parse_secret(self.secret_hex)
            self.store_host = "127.0.0.1"
            self.store, self.port = serve_store("127.0.0.1")
        self.ranks: dict[int, subprocess.Popen] = {}
        self.frontend: subprocess.Popen | None = None
        self.signals: list[int] = []
        self.reported: set[int] = set()
        self.frontend_known: bool | None = False  # its address read and checked (None: it was forged)

    def run(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        channel = None
        try:
            self._start()
            bind = "127.0.0.1" if not self.multi_node else reachable_address(self.store)
            roles = job_roles(self.cfg.topology, self.cfg.launch.nnodes)
            channel = Channel(launcher_name(self.cfg.launch.node_rank), self.store, self.secret, roles, bind)
            return self._watch(channel)
        finally:
            self._stop_all()
            if channel is not None:
                channel.close()
            remove_job_segments(self.cfg.transfer, job_id(self.secret))
            for s, handler in previous.items():
                signal.signal(s, handler)

    # ---- start ----------------------------------------------------------------------------------

    def _env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
        if not self.multi_node:
            env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # single node: gloo's sockets on loopback only
        env.update(
            {
                SECRET_ENV: self.secret_hex,
                "MASTER_ADDR": self.store_host,
                "MASTER_PORT": str(self.port),
                "WORLD_SIZE": str(self.cfg.topology.world_size),
                "LOCAL_WORLD_SIZE": str(len(self.local)),
                "GROUP_RANK": str(self.cfg.launch.node_rank),
                "EPD_LAUNCHER_PID": str(os.getpid()),
                **extra,
            }
        )
        return env

    def _start(self) -> None:
        for local, rank in enumerate(self.local):
            env = self._env(RANK=str(rank), LOCAL_RANK=str(local))
            cmd = [sys.executable, "-m", "epd.launch.worker", str(self.config_file)]
            self.ranks[rank] = _popen(cmd, env)
        if self.head:
            cmd = [sys.executable, "-m", "epd.frontend", str(self.config_file), self.store_host, str(self.port)]
            self.frontend = _popen(cmd, self._env())

    def _on_signal(self, signum: int, frame) -> None:
        self.signals.append(signum)

    # ---- watch ----------------------------------------------------------------------------------

    def _watch(self, channel: Channel) -> int:
        if not self.head:
            return self._watch_ranks(channel)
        forwarded = 0
        deadline = orphaned = None
        while True:
            if len(self.signals) > forwarded:
                forwarded = len(self.signals)
                if forwarded > 1:  # asked twice: stop now
                    log.warning("epd: second signal: killing the job")
                    return exit_codes.for_signal(self.signals[-1])
                _signal(self.frontend, self.signals[0])
                drain = self.cfg.server.drain_timeout_s if self.cfg.server.enabled else 0.0  # a server drains first
                deadline = time.monotonic() + max(60.0, 6 * self.cfg.launch.shutdown_grace_s) + drain
            code = self.frontend.poll()
            if code is not None:
                return self._frontend_ended(code)
            self._resolve_frontend(channel)
            if all(p.poll() is not None for p in self.ranks.values()):
                orphaned = orphaned or time.monotonic()
                if time.monotonic() - orphaned > self.cfg.launch.shutdown_grace_s:
                    log.error("epd: every rank has ended and the frontend is not finishing: stopping it")
                    _signal(self.frontend, signal.SIGTERM)
                    return self._wait_frontend_or_kill()
            for rank, proc in self.ranks.items():
                if rank not in self.reported and proc.poll() is not None:
                    self.reported.add(rank)
                    if proc.returncode != 0:  # 0: the frontend told it to stop (only it may)
                        self._rank_lost(channel, rank, proc.returncode)
            if deadline is not None and time.monotonic() > deadline:
                log.error("epd: the frontend did not finish after the signal: killing the job")
                return exit_codes.for_signal(self.signals[0])
            time.sleep(POLL_S)

    def _watch_ranks(self, channel: Channel) -> int:
        """A node without the frontend: until its ranks end; a signal stops them, a lost one is reported."""
        stopping = False
        while any(p.poll() is None for p in self.ranks.values()):
            if self.signals and not stopping:
                stopping = True
                for proc in self.ranks.values():
                    _signal(proc, signal.SIGTERM)
            self._resolve_frontend(channel)
            for rank, proc in self.ranks.items():
                if rank not in self.reported and proc.poll() is not None:
                    self.reported.add(rank)
                    if proc.returncode != 0:
                        self._rank_lost(channel, rank, proc.returncode)
            time.sleep(POLL_S)
        codes = [p.returncode for p in self.ranks.values()]
        return exit_codes.OK if all(c == 0 for c in codes) else exit_codes.JOB_FAILED

    def _resolve_frontend(self, channel: Channel) -> None:
        if self.frontend_known is False and self.store.check([f"epd/addr/{FRONTEND}"]):
            try:  # read once, as soon as the frontend published it
                channel.resolve([FRONTEND])
                self.frontend_known = True
            except Rejected as exc:
                log.error("epd: the frontend's address in the store is not this job's (%s)", exc.detail)
                self.frontend_known = None

    def _rank_lost(self, channel: Channel, rank: int, returncode: int) -> None:
        role = self.cfg.topology.instance_at(rank).role
        reason = f"rank {rank} ({role}) {describe_exit(returncode)}"
        log.error("epd: %s before the job told it to stop", reason)
        key = EXITED_KEY.format(rank=rank)
        self.store.set(key, seal_value(self.secret, key, reason))
        if self.frontend_known:
            channel.send(FRONTEND, PeerLost(rank=rank, reason=reason))

    def _wait_frontend_or_kill(self) -> int:
        try:
            return self._frontend_ended(self.frontend.wait(timeout=self.cfg.launch.shutdown_grace_s))
        except subprocess.TimeoutExpired:
            _signal(self.frontend, signal.SIGKILL)
            return self._frontend_ended(self.frontend.wait())

    def _frontend_ended(self, code: int) -> int:
        if code < 0 or code not in (0, 1, 3, 130, 143):
            for proc in self.ranks.values():  # nobody told them to stop: now, each cleans up on SIGTERM
                _signal(proc, signal.SIGTERM)
            log.error(
                "epd: the frontend %s; the requests that finished are in %s/records.jsonl "
                "(python -m epd.results %s rebuilds results.json from them)",
                describe_exit(code),
                self.cfg.run_dir,
                self.cfg.run_dir,
            )
            return exit_codes.JOB_FAILED
        return code

    def _stop_all(self) -> None:
        """Give the ranks ``shutdown_grace_s`` to leave (the frontend told them to), then kill what is left."""
        procs = [p for p in [*self.ranks.values(), self.frontend] if p is not None]
        deadline = time.monotonic() + self.cfg.launch.shutdown_grace_s
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        for proc in procs:
            if proc.poll() is None:
                log.warning("epd: killing pid %d, still running after the job ended", proc.pid)
                _signal(proc, signal.SIGKILL)
        for proc in procs:
            proc.wait()


def _popen(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=die_with_parent)


def _signal(proc: subprocess.Popen | None, signum: int) -> None:
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signum)


def die_with_parent() -> None:
    """In a child before exec: get SIGTERM when the parent dies (Linux), even if it is SIGKILLed."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
