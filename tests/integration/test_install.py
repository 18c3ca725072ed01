"""epd installed like any package (``pip install .``, not editable) runs from any directory.

A fresh virtual environment gets a non-editable install of a copy of the project; torch and the
other dependencies come from the environment running the tests (a ``.pth`` line names its
site-packages, so nothing is downloaded). From a directory outside the repository, the console
script ``epd-run`` and ``python -m epd.run`` then run the default experiment: Hydra must find the
config tree shipped inside the installed package.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

# what a source distribution of epd holds: enough to build and install it
PROJECT_FILES = ("pyproject.toml", "README.md", "epd", "kernels")
CONSOLE_SCRIPTS = (
    "epd-run",
    "epd-report",
    "epd-tiny",
    "epd-results",
    "epd-bench-transfer",
    "epd-bench-engine",
    "epd-bench-host",
    "epd-bench-kv",
    "epd-bench-preprocess",
    "epd-serve",
    "epd-bench-serve",
)


def _env() -> dict[str, str]:
    """This environment without the worktree on PYTHONPATH: only the installed copy can be imported."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _run(cmd: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv holding a non-editable install of epd; returns the venv's directory."""
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in PROJECT_FILES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], cwd=root)
    python = venv / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root)
    outer = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    # after the venv's own site-packages: torch, pip, setuptools... of this environment
    (Path(purelib.stdout.strip()) / "_outer_env.pth").write_text("\n".join(dict.fromkeys(outer)) + "\n")
    pip = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--ignore-installed"]
    _run([*pip, str(src)], cwd=root, timeout=300)
    return venv


def test_installed_copy_is_imported(installed, tmp_path):
    python = installed / "bin" / "python"
    code = "import epd, epd_kernels, epd.run; print(epd.__file__); print(epd_kernels.__file__); print(epd.run.CONF_DIR)"
    lines = _run([str(python), "-c", code], cwd=tmp_path).stdout.split()
    for path in lines:
        assert Path(path).resolve().is_relative_to(installed.resolve()), (
            f"{path} is not the copy installed in {installed}"
        )
    shipped, source = Path(lines[2]), REPO / "epd" / "conf"
    assert {p.relative_to(shipped) for p in shipped.rglob("*.yaml")} == {
        p.relative_to(source) for p in source.rglob("*.yaml")
    }


@pytest.mark.parametrize("script", CONSOLE_SCRIPTS)
def test_console_script_help(installed, tmp_path, script):
    proc = _run([str(installed / "bin" / script), "--help"], cwd=tmp_path, timeout=120)
    assert proc.stdout.lstrip().startswith("usage: "), proc.stdout[:500]


@pytest.mark.parametrize("launcher", ["console script", "python -m"])
def test_default_experiment_runs_from_any_directory(installed, tmp_path, launcher):
    work = tmp_path / "elsewhere"
    work.mkdir()
    run_dir = tmp_path / "run"
    if launcher == "console script":
        cmd = [str(installed / "bin" / "epd-run")]
    else:
        cmd = [str(installed / "bin" / "python"), "-m", "epd.run"]
    _run([*cmd, f"hydra.run.dir={run_dir}"], cwd=work)
    summary = json.loads((run_dir / "results.json").read_text())["summary"]
    assert summary["num_requests"] > 0 and summary["num_completed"] == summary["num_requests"]
    assert summary["num_failed"] == 0 and summary["ttft_ms"]["mean"] > 0
    hydra_cfg = yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text())
    sources = {s["provider"]: s["path"] for s in hydra_cfg["hydra"]["runtime"]["config_sources"]}
    assert Path(sources["main"]).resolve().is_relative_to(installed.resolve())  # the config tree shipped in the package
    assert not (work / "outputs").exists()  # nothing written into the working directory
