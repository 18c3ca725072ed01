"""The one place media sources are resolved and opened, under the policy in ``MediaConfig``.

A source is a local path (absolute), a ``file://`` URL, a ``data:`` URI or an ``http(s)://`` URL.
The frontend (``check_source``, ``content_digest``, ``image_size``) and the encoders' decoders
(``fetch_bytes``) both come here; nothing else opens a media path or URL.

- Local files: the real path (symlinks and ``..`` resolved) must lie inside ``media.allowed_dirs``,
  checked before the file is looked at, and a refusal reads the same whether the file exists or
  not. The file is then opened without following a symlink and without blocking
  (``O_NOFOLLOW | O_NONBLOCK``); only a regular file passes (no device, FIFO, socket or folder), its
  size is checked against ``media.max_bytes`` before a byte is read, and reads stop at the limit.
- ``data:`` URIs: base64 or percent-encoded payloads; the size is bounded before decoding.
- ``http(s)``: ``epd.media.fetch`` (only with ``media.allow_http``; public addresses only, unless
  ``media.allow_private_addresses``; redirects checked hop by hop).

Every failure is a ``MediaError`` naming the item and what to fix; no other exception escapes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import unquote, unquote_to_bytes, urlsplit

from epd.media.config import MediaConfig
from epd.media.errors import MediaError, describe, over_limit, short
from epd.media.fetch import check_url, fetch_url

CHUNK = 1 << 20
DIGEST_BYTES = 16
OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC  # a FIFO must not block the open
OTHER_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
FILE_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}
FILE_KINDS |= {stat.S_IFIFO: "a named pipe", stat.S_IFSOCK: "a socket"}


@dataclass(frozen=True)
class SourceInfo:
    """What ``check_source`` learned about a source without reading its content."""

    kind: str  # "file" | "data" | "http"
    label: str  # the source cut short, for messages
    path: str | None = None  # real path of a local file
    size: int | None = None  # bytes of a file or of a decoded data: payload; None for http (not fetched)
    mtime_ns: int | None = None  # a local file's modification time


def fetch_bytes(source: str, max_bytes: int | None = None, *, cfg: MediaConfig | None = None) -> bytes:
    """The bytes behind ``source``, at most ``max_bytes`` (default ``cfg.max_bytes``) of them.

    ``cfg`` (default ``MediaConfig()``: no local files, public http(s) only) is the policy.
    """
    cfg = cfg or MediaConfig()
    limit = cfg.max_bytes if max_bytes is None else max_bytes
    kind = source_kind(source)
    if kind == "data":
        return _data_payload(source, limit)
    if kind == "http":
        return fetch_url(source, cfg, limit)
    with _open_local(source, cfg, limit) as (fd, _, label, _):
        return b"".join(_chunks(fd, label, limit))


def check_source(source: str, cfg: MediaConfig | None = None) -> SourceInfo:
    """Check ``source`` against the policy without reading its content, and never blocking.

    Local files: allowed folder, exists, regular file, size within ``max_bytes`` (open + fstat only).
    ``data:``: decodes (the payload is in memory already). http(s): allowed, well formed, not a
    literal private address; names are resolved only when fetched.
    """
    cfg = cfg or MediaConfig()
    kind = source_kind(source)
    if kind == "data":
        return SourceInfo(kind="data", label=short(source), size=len(_data_payload(source, cfg.max_bytes)))
    if kind == "http":
        check_url(source, cfg)
        return SourceInfo(kind="http", label=short(source))
    with _open_local(source, cfg, cfg.max_bytes) as (_, st, label, real):
        return SourceInfo(kind="file", label=label, path=real, size=st.st_size, mtime_ns=st.st_mtime_ns)


def content_digest(source: str, cfg: MediaConfig | None = None) -> str:
    """Hex digest of what ``source`` holds: the bytes of a file or ``data:`` payload (the same bytes
    give the same digest under any name), or the URL of an http(s) source (never fetched here).

    Files are read in bounded chunks, never past ``cfg.max_bytes``.
    """
    cfg = cfg or MediaConfig()
    kind = source_kind(source)
    if kind == "http":
        check_url(source, cfg)
        return _hasher(b"url", source.encode("utf-8", "surrogatepass")).hexdigest()
    if kind == "data":
        return _hasher(b"bytes", _data_payload(source, cfg.max_bytes)).hexdigest()
    digest = _hasher(b"bytes")
    with _open_local(source, cfg, cfg.max_bytes) as (fd, _, label, _):
        for chunk in _chunks(fd, label, cfg.max_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def image_size(source: str, cfg: MediaConfig | None = None) -> tuple[int, int] | None:
    """(width, height) from an image's header, without decoding its pixels.

    ``MediaError`` for a source the policy refuses; None for an http(s) source (not fetched here) or
    content that is not an image Pillow reads (the decoder reports what is wrong with it).
    """
    from epd.media.image import header_size  # Pillow, only when asked

    cfg = cfg or MediaConfig()
    kind = source_kind(source)
    if kind == "http":
        check_url(source, cfg)
        return None
    if kind == "data":
        return header_size(_data_payload(source, cfg.max_bytes))
    with _open_local(source, cfg, cfg.max_bytes) as (fd, _, _, _), os.fdopen(fd, "rb", closefd=False) as f:
        return header_size(f)


def source_kind(source: str) -> str:
    """``"data"``, ``"http"`` or ``"file"``; ``MediaError`` for another scheme or a non-string."""
    if not isinstance(source, str):
        raise MediaError(f"a media source must be a string (path or URL), got {type(source).__name__}")
    lowered = source[:8].lower()
    if lowered.startswith("data:"):
        return "data"
    if lowered.startswith(("http://", "https://")):
        return "http"
    if lowered.startswith("file:") or not OTHER_SCHEME.match(source):
        return "file"
    raise MediaError(f"{short(source)}: unsupported scheme; use a local path, file://, data: or http(s)://")


@contextmanager
def _open_local(source: str, cfg: MediaConfig, limit: int) -> Iterator[tuple[int, os.stat_result, str, str]]:
    """``(fd, stat, label, real path)`` of an allowed regular file within ``limit``, open read-only."""
    label = short(source)
    real = _real_path(source)
    if not _inside_allowed(real, cfg.allowed_dirs):  # before anything looks at the file
        raise _refused(label)
    try:
        fd = os.open(real, OPEN_FLAGS)
    except OSError as exc:
        raise MediaError(f"cannot read media file {label!r}: {exc.strerror or exc}") from exc
    try:
        opened = _path_of(fd)  # a folder on the way swapped for a symlink since the check: refuse
        if opened is not None and not _inside_allowed(opened, cfg.allowed_dirs):
            raise _refused(label)
        st = _fstat(fd, label)
        _check_regular(st, label, limit)
        yield fd, st, label, real
    finally:
        os.close(fd)


def _refused(label: str) -> MediaError:
    """The one refusal for a file outside the allowed folders: it reads the same whether or not the file exists."""
    return MediaError(
        f"media file {label!r} refused: local media must lie inside media.allowed_dirs "
        "(add its folder there, or send the media as a data: URI)"
    )


def _path_of(fd: int) -> str | None:
    """The path the kernel has for open ``fd`` (Linux ``/proc``), or None where it cannot tell."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _fstat(fd: int, label: str) -> os.stat_result:
    try:
        return os.fstat(fd)
    except OSError as exc:
        raise MediaError(f"cannot read media file {label!r}: {exc.strerror or exc}") from exc


def _check_regular(st: os.stat_result, label: str, limit: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        what = FILE_KINDS.get(stat.S_IFMT(st.st_mode), "of another kind")
        raise MediaError(
            f"media file {label!r} is not a regular file (it is {what}); name an image, video or audio file"
        )
    if st.st_size > limit:
        raise over_limit(f"media file {label!r}", f"{st.st_size} bytes", "max_bytes", limit)


def _local_path(source: str) -> str:
    """The absolute path a local source names (``file://`` unquoted); ``MediaError`` if it names none."""
    path = source
    if source[:5].lower() == "file:":
        try:
            parts = urlsplit(source)
        except ValueError as exc:
            raise MediaError(f"malformed file URL {short(source)!r}: {describe(exc)}") from exc
        if parts.netloc not in ("", "localhost"):
            raise MediaError(f"file URL {short(source)!r} names host {parts.netloc!r}; write file:///absolute/path")
        path = unquote(parts.path)
    if not path or "\0" in path:
        raise MediaError(f"media source {short(source)!r} names no file")
    if not os.path.isabs(path):
        raise MediaError(
            f"media path {short(source)!r} is relative; give an absolute path (or file:/// URL) inside media.allowed_dirs"
        )
    return path


def _real_path(source: str) -> str:
    path = _local_path(source)
    try:
        return os.path.realpath(path)
    except (OSError, ValueError) as exc:  # a path too long, say: the same whether or not it exists
        raise MediaError(f"media source {short(source)!r} cannot be resolved ({describe(exc)})") from exc


def _inside_allowed(real: str, allowed_dirs: list[str] | None) -> bool:
    for folder in allowed_dirs or ():
        root = os.path.realpath(folder).rstrip("/") + "/"
        if real.startswith(root) or real + "/" == root:
            return True
    return False


def _chunks(fd: int, label: str, limit: int) -> Iterator[bytes]:
    """The file's bytes in chunks; ``MediaError`` once more than ``limit`` have come (it grew)."""
    num_bytes = 0
    while True:
        try:
            chunk = os.read(fd, min(CHUNK, limit + 1 - num_bytes))
        except OSError as exc:
            raise MediaError(f"cannot read media file {label!r}: {exc.strerror or exc}") from exc
        if not chunk:
            return
        num_bytes += len(chunk)
        if num_bytes > limit:
            raise over_limit(f"media file {label!r}", f"more than {limit} bytes", "max_bytes", limit)
        yield chunk


def _data_payload(uri: str, limit: int) -> bytes:
    """The decoded payload of a ``data:`` URI (base64 or percent-encoded), at most ``limit`` bytes."""
    header, sep, payload = uri.partition(",")
    if not sep:
        raise MediaError(f"malformed data: URI {short(uri)}: no ',' before the payload")
    is_base64 = header.lower().endswith(";base64")
    # the fewest bytes the payload can decode to: base64 packs 3 bytes in 4 characters, "%xx" is 3 for 1
    padding = len(payload) - len(payload.rstrip("="))
    at_least = len(payload) * 3 // 4 - padding if is_base64 else len(payload) // 3
    if at_least > limit:  # before decoding: a huge payload is refused without being decoded
        raise over_limit("data: URI payload", f"{at_least} bytes", "max_bytes", limit)
    try:
        data = base64.b64decode(unquote(payload), validate=True) if is_base64 else unquote_to_bytes(payload)
    except (binascii.Error, ValueError, UnicodeError) as exc:
        encoding = "base64" if is_base64 else "percent-encoded text"
        raise MediaError(f"data: URI {short(uri)} is not valid {encoding}: {describe(exc)}") from exc
    if len(data) > limit:
        raise over_limit("data: URI payload", f"{len(data)} bytes", "max_bytes", limit)
    return data


def _hasher(kind: bytes, data: bytes = b"") -> hashlib.blake2b:
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES, person=kind.ljust(16, b"\0"))
