"""The error every media failure raises: it fails one request, never the process."""

from __future__ import annotations


class MediaError(ValueError):
    """Bad or unreachable media; the message says what to fix."""


def over_limit(what: str, actual: str, key: str, limit: float) -> MediaError:
    """``<what> is <actual>, over media.<key>=<limit>``: which limit, the value, the key to raise."""
    shown = f"{limit:g}" if isinstance(limit, float) else str(limit)
    return MediaError(f"{what} is {actual}, over media.{key}={shown}")


def short(source: str) -> str:
    """``source`` cut to at most 80 characters for messages, keeping its start and its file name."""
    return source if len(source) <= 80 else source[:36] + "..." + source[-41:]
