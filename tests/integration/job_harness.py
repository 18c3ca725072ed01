"""A real epd job started as a user starts it, for tests that attack it, stop it or kill parts of it.

``Job`` runs ``python -m epd.run`` (or torchrun) in a session of its own, finds its processes (ranks
by their ``RANK``, the frontend, the launcher), reads the job's store and inbox addresses the way a
local attacker could, and waits on what the job writes (records.jsonl, results.json).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO

PYTHON = sys.executable


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text(errors="replace").replace("\0", " ")
    except OSError:
        return ""


class Job:
    def __init__(self, run_dir: Path, *overrides: str, torchrun: int = 0) -> None:
        self.run_dir = Path(run_dir)
        self.log = self.run_dir.parent / f"{self.run_dir.name}.out"
        self.run_dir.parent.mkdir(parents=True, exist_ok=True)
        entry = [PYTHON, "-m", "torch.distributed.run", f"--nproc-per-node={torchrun}", "--standalone"]
        cmd = [*(entry if torchrun else [PYTHON]), "-m", "epd.run", *overrides, f"hydra.run.dir={self.run_dir}"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        self.seen: set[int] = set()

    # ---- processes ------------------------------------------------------------------------------

    def tree(self) -> set[int]:
        found = descendants(self.proc.pid)
        self.seen |= found
        return found

    def rank_pid(self, rank: int) -> int:
        for pid in self.tree():
            cmd = _cmdline(pid)
            ours = ("-m epd.launch.worker" in cmd or "-m epd.run" in cmd) and "torch.distributed.run" not in cmd
            if ours and _environ(pid).get("RANK") == str(rank):
                return pid
        raise AssertionError(f"no process of rank {rank}")

    def frontend_pid(self) -> int:
        pids = [p for p in self.tree() if "-m epd.frontend" in _cmdline(p)]
        assert pids, "no frontend process"
        return pids[0]

    def leftovers(self) -> list[int]:
        """Processes of the job still alive (every one the tree ever held)."""
        self.tree() if self.proc.poll() is None else None
        return [p for p in self.seen if alive(p)]

    # ---- progress -------------------------------------------------------------------------------

    def num_records(self) -> int:
        path = self.run_dir / "records.jsonl"
        return sum(1 for _ in path.open()) if path.exists() else 0

    def wait_records(self, n: int, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while self.num_records() < n:
            if self.proc.poll() is not None:
                raise AssertionError(f"the job ended ({self.proc.returncode}) before {n} records:\n{self.output()}")
            if time.time() > deadline:
                raise AssertionError(f"fewer than {n} records after {timeout} s:\n{self.output()}")
            time.sleep(0.2)
        self.tree()

    def wait(self, timeout: float = 240) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the job did not end within {timeout} s:\n{self.output()}") from None

    def kill(self) -> None:
        for pid in [self.proc.pid, *self.seen]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def results(self) -> dict:
        return json.loads((self.run_dir / "results.json").read_text())

    def workload_ids(self) -> list[str]:
        lines = (self.run_dir / "workload.jsonl").read_text().splitlines()
        return [json.loads(line)["id"] for line in lines if not json.loads(line)["warmup"]]

    # ---- what a local attacker can read ---------------------------------------------------------

    def store(self):
        from epd.launch.store import connect_store

        env = _environ(self.rank_pid(0))
        return connect_store("127.0.0.1", int(env["MASTER_PORT"]))

    def address(self, name: str) -> str:
        """The inbox address ``name`` published (the attacker cannot check its seal, but can read it)."""
        return self.store().get(f"epd/addr/{name}").decode().rpartition(" ")[0]


def wait_gone(pids: list[int], timeout: float) -> float:
    """Seconds until every pid is gone; AssertionError after ``timeout``."""
    start = time.time()
    while [p for p in pids if alive(p)]:
        if time.time() - start > timeout:
            raise AssertionError(f"still alive after {timeout} s: {[p for p in pids if alive(p)]}")
        time.sleep(0.05)
    return time.time() - start
