"""Shared fixtures: the cached tiny checkpoint and helpers to run epd as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_qwen25vl(tmp_path_factory) -> Path:
    from epd.tiny import write_tiny

    return write_tiny("qwen2_5_vl", tmp_path_factory.mktemp("tiny") / "qwen2_5_vl", seed=0)


def run_epd(
    run_dir: Path, *overrides: str, timeout: int = 240, check: bool = True, code: int = 0
) -> subprocess.CompletedProcess:
    """``python -m epd.run <overrides> hydra.run.dir=<run_dir>`` in a fresh process, as a user runs it;
    with ``check``, its exit code must be ``code`` (0: every request succeeded, 3: some failed)."""
    cmd = [sys.executable, "-m", "epd.run", *overrides, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != code:
        raise AssertionError(
            f"epd.run exited with {proc.returncode}, expected {code}:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc


def read_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def write_requests(path: Path, bodies: dict[str, list[dict]], max_tokens: int) -> Path:
    """A file workload: one single-turn request per ``bodies`` entry (id → content parts)."""
    lines = [
        json.dumps({"id": rid, "max_tokens": max_tokens, "messages": [{"role": "user", "content": parts}]})
        for rid, parts in bodies.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path
