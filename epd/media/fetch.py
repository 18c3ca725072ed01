"""Fetch media bytes from a local path, a ``file://`` URL, a ``data:`` URI or ``http(s)://``.

Every source is read with the byte limit enforced while reading: an http body is streamed in
chunks and abandoned as soon as it passes ``media.max_bytes``, whatever Content-Length said.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import os
import time
import urllib.error
import urllib.request
from urllib.parse import unquote, urlparse

from epd.media.config import MediaConfig
from epd.media.errors import MediaError, over_limit, short

DEFAULT_MAX_BYTES = MediaConfig().max_bytes
CHUNK = 1 << 16
USER_AGENT = "epd-media/0.1"


def fetch_bytes(source: str, max_bytes: int | None = None, *, cfg: MediaConfig | None = None) -> bytes:
    """The raw bytes behind ``source``; ``MediaError`` names the source and what went wrong.

    ``max_bytes`` overrides ``cfg.max_bytes``; ``cfg`` (default ``MediaConfig()``) also gives the
    http timeout and whether http is allowed.
    """
    cfg = cfg or MediaConfig()
    limit = cfg.max_bytes if max_bytes is None else max_bytes
    if source.startswith("data:"):
        return _data_uri(source, limit)
    if source.startswith(("http://", "https://")):
        return _http(source, limit, cfg)
    path = unquote(urlparse(source).path) if source.startswith("file://") else source
    try:
        size = os.path.getsize(path)
        if size > limit:
            raise over_limit(f"media file {path!r}", f"{size} bytes", "max_bytes", limit)
        with open(path, "rb") as f:
            data = f.read(limit + 1)  # the file may have grown since getsize
    except OSError as exc:
        raise MediaError(f"cannot read media file {path!r}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise over_limit(f"media file {path!r}", f"more than {limit} bytes", "max_bytes", limit)
    return data


def _data_uri(uri: str, limit: int) -> bytes:
    header, sep, payload = uri.partition(",")
    if not sep:
        raise MediaError(f"malformed data: URI {short(uri)}: no ',' before the payload")
    is_base64 = header.endswith(";base64")
    at_least = len(payload) * 3 // 4 - (len(payload) - len(payload.rstrip("="))) if is_base64 else len(payload) // 3
    if at_least > limit:  # before decoding: a huge payload is refused without being decoded
        raise over_limit("data: URI payload", f"{at_least} bytes", "max_bytes", limit)
    if is_base64:
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MediaError(f"data: URI {short(uri)} is not valid base64: {exc}") from exc
    else:
        data = unquote(payload).encode("latin-1")
    if len(data) > limit:
        raise over_limit("data: URI payload", f"{len(data)} bytes", "max_bytes", limit)
    return data


def _http(url: str, limit: int, cfg: MediaConfig) -> bytes:
    label = short(url)
    if not cfg.allow_http:
        raise MediaError(f"{label}: http(s) media is disabled (media.allow_http=false)")
    timeout = cfg.fetch_timeout_s
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > limit:
                raise over_limit(f"media {label}", f"{int(length)} bytes (Content-Length)", "max_bytes", limit)
            return _read_body(resp, label, limit, deadline, timeout)
    except urllib.error.HTTPError as exc:
        raise MediaError(f"cannot fetch {label}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise _timed_out(label, timeout) from exc
        raise MediaError(f"cannot reach {label}: {exc.reason}") from exc
    except TimeoutError as exc:
        raise _timed_out(label, timeout) from exc
    except (http.client.HTTPException, OSError) as exc:
        raise MediaError(f"cannot fetch {label}: {type(exc).__name__}: {exc}") from exc


def _read_body(resp: http.client.HTTPResponse, label: str, limit: int, deadline: float, timeout: float) -> bytes:
    chunks: list[bytes] = []
    num_bytes = 0
    while chunk := resp.read1(CHUNK):  # what has arrived; each wait is at most `timeout` (the socket's)
        num_bytes += len(chunk)
        if num_bytes > limit:
            raise over_limit(
                f"media {label}", f"more than {limit} bytes (stopped reading at {num_bytes})", "max_bytes", limit
            )
        if time.monotonic() > deadline:
            raise _timed_out(label, timeout)
        chunks.append(chunk)
    return b"".join(chunks)


def _timed_out(label: str, timeout: float) -> MediaError:
    return MediaError(f"fetching {label} timed out after {timeout:g} s (raise media.fetch_timeout_s)")
