"""``ServerConfig``: the OpenAI-compatible HTTP server of ``python -m epd.serve`` (the ``server`` group)."""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
from dataclasses import dataclass, field

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")


@dataclass(kw_only=True)
class ServerConfig:
    """Where the server listens, who may call it and how much it takes in."""

    enabled: bool = False
    """Serve HTTP clients instead of playing the workload (``python -m epd.serve`` sets it)."""
    host: str = "127.0.0.1"
    """Address to listen on; anything but loopback exposes the server to the network (set ``api_key``)."""
    port: int = 8000
    """TCP port; 0 takes any free one (the address is written to ``<run_dir>/server.json``)."""
    api_key: str | None = None
    """Bearer key clients must send (``Authorization: Bearer <key>``); None: the environment variable
    named by ``api_key_env``, else no key. Only its SHA-256 is kept past the entry point (nothing the
    run writes holds the key); prefer the environment variable, since overrides land in ``.hydra/``."""
    api_key_env: str = "EPD_API_KEY"
    """Environment variable read for the key (at the entry point only) when ``api_key`` is not set."""
    api_key_sha256: str | None = None
    """Hex SHA-256 of the key: filled in by the entry point, or given instead of the key."""
    model_names: list[str] = field(default_factory=list)
    """Names clients may give as ``model`` (the first is the one ``/v1/models`` lists first); empty: the
    checkpoint folder's name."""
    max_body_bytes: int = 64 << 20
    """Largest request body (media inlined as ``data:`` URIs count); a bigger one gets 413."""
    max_pending: int = 256
    """Requests in the system at once (queued or generating); one more gets 503 with ``Retry-After``."""
    retry_after_s: int = 1
    """The ``Retry-After`` a 503 carries."""
    request_timeout_s: float = 600.0
    """A request not finished this many seconds after it arrived ends with 504 and is freed everywhere."""
    drain_timeout_s: float = 30.0
    """After SIGTERM (or Ctrl-C): how long requests in flight may finish before they are aborted."""
    default_max_tokens: int = 256
    """``max_tokens`` of a request that gives neither ``max_tokens`` nor ``max_completion_tokens``."""

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            raise ValueError(f"server.host={self.host!r}: give an IP address of this host, e.g. 127.0.0.1") from None
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"server.port={self.port!r}: a TCP port from 1 to 65535, or 0 for any free one")
        for key in ("max_body_bytes", "max_pending", "retry_after_s", "default_max_tokens"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"server.{key}={value!r}: set a whole number >= 1")
        for key in ("request_timeout_s", "drain_timeout_s"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ValueError(f"server.{key}={value!r}: set a finite number of seconds > 0")
        if self.api_key is not None and not (isinstance(self.api_key, str) and self.api_key.strip()):
            raise ValueError("server.api_key is empty: give a key, or leave it unset (null)")
        if self.api_key_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", str(self.api_key_sha256)):
            raise ValueError("server.api_key_sha256 must be 64 lowercase hex digits (sha256sum of the key)")
        for name in self.model_names:
            if not isinstance(name, str) or not NAME.fullmatch(name):
                raise ValueError(f"server.model_names: {name!r} is not a model name (letters, digits, ._:/-)")

    def with_key(self, environ: dict[str, str]) -> ServerConfig:
        """This config with the API key (``api_key``, else ``environ[api_key_env]``) replaced by its
        SHA-256; called once at the entry point."""
        from dataclasses import replace

        key = self.api_key or environ.get(self.api_key_env) or None
        if key is None:
            return self
        return replace(self, api_key=None, api_key_sha256=hashlib.sha256(key.encode()).hexdigest())
