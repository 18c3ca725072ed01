"""Every command answers ``--help`` with a usage line and what it does, and exits 0 (real subprocesses)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

# module → words its help must contain (beyond the usage line naming the command)
COMMANDS = {
    "epd.run": ["config groups", "topology: 1e1p", "model: ", "--cfg job"],
    "epd.report": ["results.json", "--stat", "no results.json"],
    "epd.tiny": ["family", "qwen2_5_vl", "--seed"],
    "epd.bench.transfer": ["transfer=VALUE", "sizes=VALUE", "reference"],
    "epd.bench.engine": ["--smoke", "transformers", "floor"],
    "epd.bench.host": ["host work", "batch 1 and 32"],
    "epd.serve": ["/v1/chat/completions", "server keys", "drain_timeout_s", "topology: 1e1p"],
    "epd.bench.serve": ["endpoint.url", "vLLM", "workload: ", "return_token_ids"],
    "epd_kernels.bench": ["--only", "merge", "rope"],
    "epd.bench.kv": ["transfer=VALUE", "tokens=VALUE", "reference"],
    "epd.bench.preprocess": ["--device", "host", "floor"],
    "epd.results": ["records.jsonl", "run_dir"],
    "epd.profile": ["profile.json", "profile keys", "transfer_backends", "config groups"],
    "epd.sim": ["profile=D/profile.json", "sim keys", "simulated", "fast_forward"],
    "epd.sim.calibrate": ["profile=P run=RUN_DIR", "kv_transfer", "TPOT"],
    "epd.plan": ["goodput per GPU", "plan keys", "gpu_budget"],
}


@pytest.mark.parametrize("module", list(COMMANDS))
def test_help(module):
    proc = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = proc.stdout.lstrip().splitlines()[0]
    assert first.startswith("usage: ") and module in first, first
    for words in COMMANDS[module]:
        assert words in proc.stdout, f"{module} --help does not mention {words!r}"
    assert "bad argument" not in proc.stdout + proc.stderr
