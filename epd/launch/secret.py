"""The job secret that authenticates every control message (``epd.protocol.auth``).

Where it comes from:
- ``python -m epd.run`` (epd's own launcher) draws a fresh one and hands it to every process it
  starts through the environment (``EPD_JOB_SECRET``).
- A multi-node job (torchrun or epd's launcher over several nodes) takes it from ``EPD_JOB_SECRET``,
  which the user sets to the same value on every node; it refuses to start without it.
- A single-node torchrun job without ``EPD_JOB_SECRET``: rank 0 draws one and leaves it in a file
  only its user can read (a fresh 0700 directory under the system temp dir); the other ranks take the
  file's path from the store and read the secret only after checking that the directory and the
  file belong to their own user and nobody else can read or replace them. The file is removed once
  every rank has read it. The secret itself is never written to the store or the run directory.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import stat
import tempfile
from datetime import timedelta
from pathlib import Path

SECRET_ENV = "EPD_JOB_SECRET"
MIN_SECRET_BYTES = 16
PATH_KEY = "epd/secret_path"


def new_secret() -> str:
    """A fresh secret, as the hex string ``EPD_JOB_SECRET`` holds."""
    return secrets.token_hex(32)


def parse_secret(text: str) -> bytes:
    """The bytes of an ``EPD_JOB_SECRET`` value; ``ValueError`` unless it is hex of 16 bytes or more."""
    try:
        value = bytes.fromhex(text.strip())
    except ValueError:
        value = b""
    if len(value) < MIN_SECRET_BYTES:
        raise ValueError(
            f"{SECRET_ENV} must be at least {2 * MIN_SECRET_BYTES} hex digits; make one with "
            "`python -c 'import secrets; print(secrets.token_hex(32))'` and set the same value on every node"
        )
    return value


def secret_from_env(env: dict[str, str] | os._Environ = os.environ) -> bytes | None:
    text = env.get(SECRET_ENV)
    return None if text is None else parse_secret(text)


def job_id(secret: bytes) -> str:
    """A public name of the job derived from its secret (prefixes of its shm segments); reveals nothing of it."""
    return hashlib.blake2b(secret, digest_size=8, person=b"epd-job-id").hexdigest()


def torchrun_secret(store, rank: int, world_size: int, multi_node: bool, timeout_s: float = 600) -> bytes:
    """The job secret of a torchrun job: ``EPD_JOB_SECRET``, else (one node only) rank 0's private file."""
    env = secret_from_env()
    if env is not None:
        return env
    if multi_node:
        raise ValueError(
            f"a multi-node job needs {SECRET_ENV} set to the same secret on every node; make one with "
            "`python -c 'import secrets; print(secrets.token_hex(32))'`"
        )
    if rank == 0:
        value = new_secret()
        folder = Path(tempfile.mkdtemp(prefix="epd-secret-"))  # 0700, ours
        path = folder / "secret"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value)
        store.set(PATH_KEY, str(path))
        store.wait([f"epd/secret_read/{r}" for r in range(1, world_size)], timedelta(seconds=timeout_s))
        shutil.rmtree(folder, ignore_errors=True)
        return parse_secret(value)
    path = Path(store.get(PATH_KEY).decode())
    value = _read_private(path)
    store.set(f"epd/secret_read/{rank}", "1")
    return value


def _read_private(path: Path) -> bytes:
    """Read the secret file only if it and its folder are ours alone (not links, no group/other access)."""
    uid = os.getuid()
    for item, mode_mask in ((path.parent, 0o077), (path, 0o077)):
        info = os.lstat(item)
        if stat.S_ISLNK(info.st_mode) or info.st_uid != uid or info.st_mode & mode_mask:
            raise ValueError(
                f"refusing the job secret at {path}: {item} must belong to uid {uid} with no access for others "
                f"(set {SECRET_ENV} instead)"
            )
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd) as f:
        return parse_secret(f.read())
