"""What a run ran on: library versions, host, devices, code version."""

from __future__ import annotations

import importlib.metadata
import platform
import socket
import subprocess
from pathlib import Path
from types import ModuleType

GIT_TIMEOUT_S = 2.0


def environment_info() -> dict:
    """{python, torch, transformers, cuda, platform, hostname, devices, git_commit, git_dirty}.

    `devices` lists the CUDA device names this process can see, or ["cpu"]. Reading them may
    initialize CUDA in the calling process, so loggers call this after the measured run.
    Versions of missing packages are None.
    """
    return {
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "cuda": _cuda_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "devices": _devices(),
        **_git_state(),
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _torch() -> ModuleType | None:
    try:
        import torch
    except ImportError:
        return None
    return torch


def _cuda_version() -> str | None:
    torch = _torch()
    return None if torch is None else torch.version.cuda


def _devices() -> list[str]:
    torch = _torch()
    if torch is None or not torch.cuda.is_available():
        return ["cpu"]
    return [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]


def _git_state() -> dict:
    """Commit and dirtiness of the epd checkout, when it is a git repository."""
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = _git(repo, "rev-parse", "HEAD")
        dirty = bool(_git(repo, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": dirty}


def _git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=True)
    return result.stdout.strip()
