"""The error every media failure raises: it fails one request, never the process."""

from __future__ import annotations

import re

_OBJECT_REPR = re.compile(r"<[^<>]*? at 0x[0-9a-fA-F]+>")  # e.g. <_io.BytesIO object at 0x7f...>


class MediaError(ValueError):
    """Bad or unreachable media; the message says what to fix."""


def over_limit(what: str, actual: str, key: str, limit: float) -> MediaError:
    """``<what> is <actual>, over media.<key>=<limit>``: which limit, the value, the key to raise."""
    shown = f"{limit:g}" if isinstance(limit, float) else str(limit)
    return MediaError(f"{what} is {actual}, over media.{key}={shown}")


def short(source: str) -> str:
    """``source`` cut to at most 80 characters for messages, keeping its start and its file name;
    characters that do not print (newlines, lone surrogates) are written as escapes."""
    return printable(source if len(source) <= 80 else source[:36] + "..." + source[-41:])


def printable(text: str) -> str:
    """``text`` with every character that does not print written as its Python escape (``\\n``)."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def describe(exc: BaseException) -> str:
    """A library exception as one short line for a message: first line, object reprs cut out.

    Pillow and PyAV name the file object they read (``<_io.BytesIO object at 0x...>``); that says
    nothing to the user and differs from run to run, so it is dropped.
    """
    text = _OBJECT_REPR.sub("", str(exc))
    text = re.sub(r"\s+", " ", text.strip().splitlines()[0] if text.strip() else "").strip(" :,")
    return printable(text or type(exc).__name__)[:200]
