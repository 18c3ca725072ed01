"""The http(s) client behind ``epd.media.source``: one GET, redirects followed by hand, every hop checked.

Stdlib ``http.client`` on a socket this module connects itself, because the check and the
connection must use the same address: a host name is resolved once (``getaddrinfo``), every
address it resolves to is checked against the private-address rule (``epd.media.address``), and
the connection goes to a checked address, so a second lookup cannot swap in another (DNS
rebinding). The request still names the host: the ``Host`` header, and for https the TLS server
name (SNI) and certificate check (``ssl.create_default_context``: system CAs, hostname verified).
urllib follows redirects to anywhere and resolves names itself; requests/urllib3 do too, and pinning
the address under them takes more code than this. Proxies (``http_proxy``) are not used.

``media.fetch_timeout_s`` bounds the whole fetch: name lookup, connecting, TLS, headers, body and
every redirect hop together. The body is streamed and abandoned as soon as it passes the byte
limit, whatever ``Content-Length`` said. Only ``epd.media.source`` calls this module.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

from epd.media.address import is_local_name, parse_address, refusal
from epd.media.config import MediaConfig
from epd.media.errors import MediaError, describe, over_limit, short

SCHEMES = {"http": 80, "https": 443}
REDIRECTS = (301, 302, 303, 307, 308)
CHUNK = 1 << 16
USER_AGENT = "epd-media/0.1"
PATH_SAFE = "/%:@!$&'()*+,;=-._~?"  # left as they are in the request target; the rest is %-encoded


@dataclass(frozen=True)
class Target:
    """One URL split into what a request needs."""

    url: str
    scheme: str  # "http" | "https"
    host: str  # name or address, IPv6 without brackets
    port: int
    path: str  # request target: path and query, %-encoded, starting with "/"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == SCHEMES[self.scheme] else f"{host}:{self.port}"


def parse_target(url: str, label: str) -> Target:
    """``url`` split for a request; ``MediaError`` for another scheme, no host or a bad port."""
    try:
        parts = urlsplit(url)
        scheme, host, port = parts.scheme.lower(), parts.hostname, parts.port
        path = quote(parts.path or "/", safe=PATH_SAFE) + (
            f"?{quote(parts.query, safe=PATH_SAFE)}" if parts.query else ""
        )
    except (ValueError, UnicodeError) as exc:
        raise MediaError(f"{label}: malformed URL {short(url)} ({describe(exc)})") from exc
    if scheme not in SCHEMES:
        raise MediaError(f"{label}: {short(url)} refused: only http:// and https:// media may be fetched")
    if not host:
        raise MediaError(f"{label}: malformed URL {short(url)} (no host)")
    try:
        host = host if host.isascii() else host.encode("idna").decode("ascii")  # Host header, SNI, DNS
    except UnicodeError as exc:
        raise MediaError(f"{label}: malformed host name in {short(url)} ({describe(exc)})") from exc
    return Target(url=url, scheme=scheme, host=host, port=port or SCHEMES[scheme], path=path)


def check_url(url: str, cfg: MediaConfig) -> None:
    """What can be checked of an http(s) source without the network: allowed at all, well formed, and
    not a literal private address or ``localhost`` (names are checked when fetched)."""
    label = short(url)
    if not cfg.allow_http:
        raise MediaError(f"{label}: http(s) media is disabled (media.allow_http=false)")
    target = parse_target(url, label)
    address = parse_address(target.host)
    if is_local_name(target.host):
        _refuse(label, target.host, "loopback", cfg)
    elif address is not None:
        _refuse(label, target.host, refusal(address), cfg)


def fetch_url(url: str, cfg: MediaConfig, limit: int) -> bytes:
    """The body behind ``url``, at most ``limit`` bytes, after at most ``cfg.max_redirects`` redirects."""
    check_url(url, cfg)
    label = short(url)
    deadline = time.monotonic() + cfg.fetch_timeout_s
    for hop in range(cfg.max_redirects + 1):
        target = parse_target(url, label)
        try:
            body, location = _get(target, label, cfg, limit, deadline)
        except TimeoutError as exc:
            raise _timed_out(label, cfg) from exc
        except ssl.SSLError as exc:
            raise MediaError(f"cannot fetch {_hop(label, target)}: TLS failed ({describe(exc)})") from exc
        except (http.client.HTTPException, OSError, UnicodeError, ValueError) as exc:
            if isinstance(exc, MediaError):
                raise
            verb = "reach" if isinstance(exc, ConnectionError) else "fetch"
            raise MediaError(f"cannot {verb} {_hop(label, target)}: {describe(exc)}") from exc
        if location is None:
            return body
        if hop == cfg.max_redirects:
            raise MediaError(f"{label}: more than media.max_redirects={cfg.max_redirects} redirects")
        url = _redirect_target(url, location, label)
    raise AssertionError("unreachable: the loop returns or raises")


def _redirect_target(url: str, location: str, label: str) -> str:
    """The absolute URL a redirect from ``url`` points to; ``MediaError`` unless it is http(s)."""
    try:
        target = urljoin(url, location)
        scheme = urlsplit(target).scheme.lower()
    except ValueError as exc:
        raise MediaError(f"{label}: redirect to a malformed URL {short(location)} ({describe(exc)})") from exc
    if scheme not in SCHEMES:
        raise MediaError(
            f"{label}: redirect to {short(target)} refused: only http:// and https:// media may be fetched"
        )
    return target


def _get(target: Target, label: str, cfg: MediaConfig, limit: int, deadline: float) -> tuple[bytes, str | None]:
    """``(body, None)`` of one GET, or ``(b"", location)`` for a redirect (its body is not read)."""
    sock = _connect(target, label, cfg, deadline)
    conn = http.client.HTTPConnection(target.host, target.port)
    conn.sock = sock  # connected (and TLS-wrapped) here; http.client never looks the name up
    try:
        headers = {"Host": target.host_header, "User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        conn.request("GET", target.path, headers={**headers, "Connection": "close"})
        resp = conn.getresponse()
        if resp.status in REDIRECTS:
            location = resp.getheader("Location")
            if not location:
                raise MediaError(f"cannot fetch {_hop(label, target)}: HTTP {resp.status} without a Location")
            return b"", location
        if not 200 <= resp.status < 300:
            raise MediaError(f"cannot fetch {_hop(label, target)}: HTTP {resp.status} {short(resp.reason or '')}")
        length = resp.getheader("Content-Length", "")
        if length.isdigit() and int(length) > limit:
            raise over_limit(f"media {label}", f"{int(length)} bytes (Content-Length)", "max_bytes", limit)
        return _read_body(resp, sock, label, limit, deadline), None
    finally:
        conn.close()


def _connect(target: Target, label: str, cfg: MediaConfig, deadline: float) -> socket.socket:
    """A socket connected to a checked address of ``target.host`` (TLS-wrapped for https)."""
    addresses = _resolve(target, label, cfg, deadline)
    error: OSError | None = None
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(_remaining(deadline))
            sock.connect(sockaddr)
            if target.scheme == "https":
                context = ssl.create_default_context()
                return context.wrap_socket(sock, server_hostname=target.host)
            return sock
        except TimeoutError:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            error = exc
    assert error is not None  # _resolve returns at least one address
    raise error


def _resolve(target: Target, label: str, cfg: MediaConfig, deadline: float) -> list[tuple[int, tuple]]:
    """Every (family, sockaddr) ``target.host`` resolves to, each checked against the address rule."""
    if is_local_name(target.host):
        _refuse(_hop(label, target), target.host, "loopback", cfg)
    infos = _getaddrinfo(target, label, deadline)
    out = []
    for family, _, _, _, sockaddr in infos:
        address = parse_address(str(sockaddr[0]))
        if address is None:
            raise MediaError(f"cannot reach {_hop(label, target)}: resolved to {sockaddr[0]!r}, not an IP address")
        _refuse(_hop(label, target), target.host, refusal(address), cfg, address=str(address))
        out.append((family, sockaddr))
    return out


def _getaddrinfo(target: Target, label: str, deadline: float) -> list:
    """``getaddrinfo`` bounded by the deadline (a lookup cannot be cancelled: it finishes in a thread)."""
    found: dict[str, object] = {}

    def lookup() -> None:
        try:
            found["infos"] = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError, ValueError) as exc:
            found["error"] = exc

    if parse_address(target.host) is not None:
        lookup()  # a literal address: nothing to wait for
    else:
        thread = threading.Thread(target=lookup, name="epd-media-dns", daemon=True)
        thread.start()
        thread.join(_remaining(deadline))
        if thread.is_alive():
            raise TimeoutError("name lookup")
    if "error" in found:
        exc = found["error"]
        raise MediaError(f"cannot reach {_hop(label, target)}: cannot resolve {target.host!r} ({describe(exc)})")
    infos = found.get("infos") or []
    if not infos:
        raise MediaError(f"cannot reach {_hop(label, target)}: {target.host!r} resolves to no address")
    return infos  # type: ignore[return-value]


def _read_body(resp: http.client.HTTPResponse, sock: socket.socket, label: str, limit: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    num_bytes = 0
    while True:
        sock.settimeout(_remaining(deadline))  # each wait ends at the whole fetch's deadline
        chunk = resp.read1(CHUNK)  # what has arrived, at most CHUNK
        if not chunk:
            return b"".join(chunks)
        num_bytes += len(chunk)
        if num_bytes > limit:
            actual = f"more than {limit} bytes (stopped reading at {num_bytes})"
            raise over_limit(f"media {label}", actual, "max_bytes", limit)
        chunks.append(chunk)


def _refuse(label: str, host: str, reason: str | None, cfg: MediaConfig, address: str | None = None) -> None:
    if reason is None or cfg.allow_private_addresses:
        return
    where = f"{host!r} resolves to {address}" if address and address != host else repr(host)
    raise MediaError(
        f"{label}: refused: {where}, not a public address ({reason}); "
        "set media.allow_private_addresses=true to fetch media from private addresses"
    )


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


def _hop(label: str, target: Target) -> str:
    """``label``, or ``<hop url> (redirected from <label>)`` past the first hop."""
    hop = short(target.url)
    return label if hop == label else f"{hop} (redirected from {label})"


def _timed_out(label: str, cfg: MediaConfig) -> MediaError:
    return MediaError(f"fetching {label} timed out after {cfg.fetch_timeout_s:g} s (raise media.fetch_timeout_s)")
