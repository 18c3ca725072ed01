"""A real ``python -m epd.serve`` for tests: started as a user starts it (``server.port=0``), reached
over loopback through the official ``openai`` SDK, raw HTTP (httpx) and its ``/metrics``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO
from tests.integration.job_harness import alive, descendants

PYTHON = sys.executable


class Server:
    def __init__(self, run_dir: Path, *overrides: str, env: dict[str, str] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.log = self.run_dir.parent / f"{self.run_dir.name}.out"
        self.run_dir.parent.mkdir(parents=True, exist_ok=True)
        cmd = [PYTHON, "-m", "epd.serve", "server.port=0", *overrides, f"hydra.run.dir={self.run_dir}"]
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=full_env
            )
        self.info: dict = {}
        self.seen: set[int] = set()

    # ---- start-up -------------------------------------------------------------------------------

    def wait_listening(self, timeout: float = 240) -> Server:
        """Until ``server.json`` says where it listens (the ranks may still be warming up)."""
        path, deadline = self.run_dir / "server.json", time.time() + timeout
        while not path.exists():
            self._check_alive(deadline)
            time.sleep(0.05)
        self.info = json.loads(path.read_text())
        return self

    def wait_ready(self, timeout: float = 240) -> Server:
        """Until ``/health`` answers 200."""
        self.wait_listening(timeout)
        deadline = time.time() + timeout
        while self.health() != 200:
            self._check_alive(deadline)
            time.sleep(0.1)
        self.tree()
        return self

    def _check_alive(self, deadline: float) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"epd.serve ended ({self.proc.returncode}) before it was ready:\n{self.output()}")
        if time.time() > deadline:
            self.kill()
            raise AssertionError(f"epd.serve was not ready in time:\n{self.output()}")

    # ---- talking to it --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.info["url"]

    @property
    def base(self) -> str:
        return self.url.removesuffix("/v1")

    def client(self, api_key: str = "none", timeout: float = 120):
        import openai

        return openai.OpenAI(base_url=self.url, api_key=api_key, max_retries=0, timeout=timeout)

    def aclient(self, api_key: str = "none", timeout: float = 120):
        import openai

        return openai.AsyncOpenAI(base_url=self.url, api_key=api_key, max_retries=0, timeout=timeout)

    def health(self) -> int:
        try:
            return httpx.get(f"{self.base}/health", timeout=5).status_code
        except httpx.HTTPError:
            return 0

    def post(self, path: str, body, headers: dict | None = None, timeout: float = 120) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"content-type": "application/json", **(headers or {})}
        return httpx.post(f"{self.url}{path}", content=content, headers=headers, timeout=timeout)

    def metrics(self) -> dict[str, dict[tuple, float]]:
        """``/metrics`` parsed by prometheus_client: sample name → {labels (sorted items): value}."""
        text = httpx.get(f"{self.base}/metrics", timeout=10).text
        out: dict[str, dict[tuple, float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
        return out

    def kv_blocks(self) -> tuple[float, float]:
        """(free, total) KV-cache blocks summed over the language ranks, from the last heartbeats."""
        m = self.metrics()
        return sum(m.get("epd_kv_cache_free_blocks", {}).values()), sum(m.get("epd_kv_cache_total_blocks", {}).values())

    # ---- processes ------------------------------------------------------------------------------

    def tree(self) -> set[int]:
        found = descendants(self.proc.pid)
        self.seen |= found
        return found

    @property
    def frontend_pid(self) -> int:
        return int(self.info["pid"])

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 120) -> int:
        self.tree()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"epd.serve did not stop within {timeout} s:\n{self.output()}") from None

    def kill(self) -> None:
        for pid in [self.proc.pid, *self.seen]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()

    def leftovers(self) -> list[int]:
        return [p for p in self.seen if alive(p)]

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def results(self) -> dict:
        return json.loads((self.run_dir / "results.json").read_text())

    def records(self) -> list[dict]:
        path = self.run_dir / "records.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def wait_for(condition, timeout: float, what: str, interval: float = 0.2):
    """``condition()`` once truthy (its value); AssertionError naming ``what`` after ``timeout``."""
    deadline = time.time() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
