"""What the kernel tests share: the ``gpu`` marker and a run of a script under Triton's CPU interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "kernels"


def gpu(test):
    """A GPU test: marked ``gpu`` (run them alone with ``pytest -m gpu``), skipped without CUDA."""
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


def run_in_interpreter(script: str, timeout: int = 240) -> None:
    """Run ``script`` in a fresh interpreter with ``TRITON_INTERPRET=1`` (Triton kernels executed on
    the CPU, in numpy); it must print ``ok``. The repository root is the working directory and on the
    path, so the script may import from ``tests``."""
    pytest.importorskip("triton")
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": os.pathsep.join([str(KERNELS), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
