"""Whole-run mistakes fail before any rank starts, in seconds, with one line naming what to change
(no traceback): a missing workload file, a line that is not JSON, a model name a tiny preset would
ignore, a model that cannot fit this machine's memory."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest


def _epd(tmp_path, *overrides: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "epd.run", *overrides, f"hydra.run.dir={tmp_path / 'run'}"]
    start = time.time()
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    return proc, time.time() - start


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("missing", "no such file"),
        ("not-json", "bad.jsonl:2: not valid JSON"),
        ("tiny-with-name", "model.name='Qwen/Qwen2.5-VL-7B-Instruct' with the tiny preset"),
        ("too-big", "does not fit in memory"),
    ],
)
def test_fails_fast_with_one_line(tmp_path, case, words):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": [}\n')
    overrides = {
        "missing": ["workload=file", f"workload.path={tmp_path / 'nope.jsonl'}"],
        "not-json": ["workload=file", f"workload.path={bad}"],
        "tiny-with-name": ["model.name=Qwen/Qwen2.5-VL-7B-Instruct"],
        "too-big": [
            "model=qwen2_5_vl",
            "model.random_init=true",
            "device=cpu",
            "model.dtype=float32",
            "engine.kv_tokens=4000000",
        ],  # fmt: skip
    }[case]
    proc, seconds = _epd(tmp_path, *overrides)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert seconds < 10, f"took {seconds:.1f} s"
    output = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    errors = [line for line in output if line.startswith("epd: error:")]
    assert len(errors) == 1 and words in errors[0], output
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "run" / "records.jsonl").exists(), "no rank may have started"
