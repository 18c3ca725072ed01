"""The http(s) side of the media source policy, against real http.server servers on loopback addresses:
private addresses refused (names, literals, redirect hops), redirects checked hop by hop, the body
cut off at the limit, the Host header and TLS name taken from the URL while the socket goes to the
checked address."""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import pytest

import epd.media.fetch as fetch_mod
from epd.media import MediaConfig, MediaError, check_source, fetch_bytes
from epd.media.address import refusal

BODY = b"media bytes " * 100
pytestmark = pytest.mark.timeout(30)


class Handler(BaseHTTPRequestHandler):
    """/ok, /host (echoes the Host header), /to?<url> (302 to url), /chain/<n> (n redirects, then /ok),
    /endless (no Content-Length, 64 KiB chunks until the client leaves). Counts requests per server."""

    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        self.server.hits.append(self.path)  # type: ignore[attr-defined]
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._route()

    def _route(self) -> None:
        if self.path.startswith("/to?"):
            return self._redirect(unquote(self.path[len("/to?") :]))
        if self.path.startswith("/chain/"):
            left = int(self.path.rsplit("/", 1)[1])
            return self._redirect(f"/chain/{left - 1}" if left > 0 else "/ok")
        if self.path == "/endless":
            self.send_response(200)
            self.end_headers()
            for _ in range(1024):  # 64 MiB at most
                self.wfile.write(b"\0" * (64 << 10))
            return None
        body = self.headers.get("Host", "").encode() if self.path == "/host" else BODY
        self.send_response(200 if self.path in ("/ok", "/host") else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return None

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(host: str, tls: ssl.SSLContext | None = None) -> Iterator[tuple[str, ThreadingHTTPServer]]:
    """A server on ``host`` (random port) in a thread; yields its base URL and the server (``.hits``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_cls = type("Server", (ThreadingHTTPServer,), {"address_family": family})
    httpd = server_cls((host, 0), Handler)
    httpd.hits = []  # type: ignore[attr-defined]
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    name = f"[{host}]" if ":" in host else host
    try:
        yield f"{'https' if tls else 'http'}://{name}:{httpd.server_address[1]}", httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


PRIVATE_OK = MediaConfig(allow_private_addresses=True)


def test_loopback_is_refused_by_default_without_a_connection():
    with serve("127.0.0.1") as (base, httpd), serve("::1") as (base6, httpd6):
        port = httpd.server_address[1]
        for url in [
            f"{base}/ok",
            f"http://localhost:{port}/ok",
            f"http://LOCALHOST.:{port}/ok",
            f"http://[::ffff:127.0.0.1]:{port}/ok",
            f"http://0x7f000001:{port}/ok",
            f"http://127.1:{port}/ok",
            f"{base6}/ok",
        ]:
            with pytest.raises(
                MediaError, match=r"not a public address \(loopback\); set media.allow_private_addresses"
            ):
                fetch_bytes(url)
            with pytest.raises(MediaError, match="not a public address"):
                check_source(url)  # the frontend's check says so too, without any lookup
        assert httpd.hits == [] and httpd6.hits == []  # refused before connecting
        assert fetch_bytes(f"http://localhost:{port}/ok", cfg=PRIVATE_OK) == BODY
        assert fetch_bytes(f"{base6}/ok", cfg=PRIVATE_OK) == BODY


def test_a_name_is_checked_by_every_address_it_resolves_to():
    host = socket.gethostname()  # resolves through /etc/hosts or DNS to this machine: loopback or private
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM)}
    except OSError:
        pytest.skip(f"this machine's name {host!r} does not resolve")
    if not all(refusal(fetch_mod.parse_address(a)) for a in addresses):
        pytest.skip(f"{host!r} resolves to a public address here ({addresses})")
    with serve("127.0.0.1") as (_, httpd):
        with pytest.raises(
            MediaError, match=rf"refused: {re.escape(repr(host.lower()))} resolves to .*, not a public address"
        ):
            fetch_bytes(f"http://{host}:{httpd.server_address[1]}/ok")
        assert httpd.hits == []


def test_each_redirect_hop_is_checked(monkeypatch):
    """A public server that redirects to a private one: the hop is refused, the private one never asked.

    No public server is reachable from a test, so this one test calls 127.0.0.2 public; the rule
    itself is the real one for every other address (127.0.0.1 stays loopback)."""
    monkeypatch.setattr(fetch_mod, "refusal", lambda a: None if str(a) == "127.0.0.2" else refusal(a))
    with serve("127.0.0.2") as (public, front), serve("127.0.0.1") as (private, inner):
        assert fetch_bytes(f"{public}/ok") == BODY  # the first hop passes
        with pytest.raises(MediaError, match=r"refused: '127\.0\.0\.1', not a public address \(loopback\)"):
            fetch_bytes(f"{public}/to?{private}/ok")
        port = inner.server_address[1]
        with pytest.raises(MediaError, match=r"refused: 'localhost', not a public address \(loopback\)"):
            fetch_bytes(f"{public}/to?http://localhost:{port}/ok")
        assert inner.hits == [] and front.hits.count(f"/to?{private}/ok") == 1
        assert fetch_bytes(f"{public}/to?{private}/ok", cfg=PRIVATE_OK) == BODY  # allowed: followed
        assert inner.hits == ["/ok"]


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("ftp://127.0.0.1/x.png", r"redirect to ftp://127\.0\.0\.1/x\.png refused: only http:// and https://"),
        ("file:///etc/passwd", r"redirect to file:///etc/passwd refused"),
        ("gopher://x/", r"redirect to gopher://x/ refused"),
        ("http://[::1/x", r"redirect to a malformed URL http://\[::1/x \(Invalid IPv6 URL\)"),
    ],
)
def test_redirects_to_other_schemes_are_refused(location, message):
    with serve("127.0.0.1") as (base, _), pytest.raises(MediaError, match=message):
        fetch_bytes(f"{base}/to?{location}", cfg=PRIVATE_OK)


def test_redirect_chains_are_bounded():
    with serve("127.0.0.1") as (base, httpd):
        assert fetch_bytes(f"{base}/chain/2", cfg=PRIVATE_OK) == BODY  # 2 + 1 hops to /ok: 3 redirects
        assert httpd.hits == ["/chain/2", "/chain/1", "/chain/0", "/ok"]
        with pytest.raises(MediaError, match=r"/chain/3: more than media\.max_redirects=3 redirects"):
            fetch_bytes(f"{base}/chain/3", cfg=PRIVATE_OK)
        no_redirects = MediaConfig(allow_private_addresses=True, max_redirects=0)
        with pytest.raises(MediaError, match="more than media.max_redirects=0 redirects"):
            fetch_bytes(f"{base}/chain/0", cfg=no_redirects)
        assert fetch_bytes(f"{base}/chain/9", cfg=MediaConfig(allow_private_addresses=True, max_redirects=10)) == BODY


def test_an_over_limit_body_is_cut_off_after_a_redirect():
    with serve("127.0.0.1") as (base, _):
        cfg = MediaConfig(allow_private_addresses=True, max_bytes=100_000)
        with pytest.raises(
            MediaError, match=r"is more than 100000 bytes \(stopped reading at \d+\), over media.max_bytes"
        ):
            fetch_bytes(f"{base}/to?/endless", cfg=cfg)


def test_host_header_names_the_url_host():
    with serve("127.0.0.1") as (base, httpd):
        port = httpd.server_address[1]
        assert fetch_bytes(f"http://localhost:{port}/host", cfg=PRIVATE_OK) == f"localhost:{port}".encode()
        assert fetch_bytes(f"{base}/host", cfg=PRIVATE_OK) == f"127.0.0.1:{port}".encode()


@pytest.fixture(scope="module")
def localhost_cert(tmp_path_factory):
    """A self-signed certificate for the name ``localhost`` only (openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    root = tmp_path_factory.mktemp("tls")
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_tls_verifies_the_url_name_while_connecting_to_the_checked_address(localhost_cert, monkeypatch):
    cert, key = localhost_cert
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    names: list[str | None] = []
    tls.sni_callback = lambda sock, name, ctx: names.append(name)
    with serve("127.0.0.1", tls) as (base, httpd):
        port = httpd.server_address[1]
        with pytest.raises(MediaError, match=r"TLS failed \(.*certificate verify failed"):
            fetch_bytes(f"https://localhost:{port}/ok", cfg=PRIVATE_OK)  # not a trusted CA yet
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust it (OpenSSL reads this per context)
        assert fetch_bytes(f"https://localhost:{port}/ok", cfg=PRIVATE_OK) == BODY
        assert fetch_bytes(f"https://localhost:{port}/host", cfg=PRIVATE_OK) == f"localhost:{port}".encode()
        assert names[-1] == "localhost"  # SNI carries the URL's name, not the address connected to
        with pytest.raises(MediaError, match=r"TLS failed \(.*(IP address mismatch|certificate verify failed)"):
            fetch_bytes(f"{base}/ok", cfg=PRIVATE_OK)  # the certificate is for localhost, not 127.0.0.1


def test_http_off_and_malformed_urls():
    for url, message in [
        ("http://[::1/x", "malformed URL"),
        ("http://host:99999/x", "malformed URL"),
        ("http:///x", r"\(no host\)"),
        ("http://" + "a" * 70 + "." + "b" * 70 + "/", "malformed host name|cannot resolve"),
        ("https://\ud800/", "malformed"),
    ]:
        with pytest.raises(MediaError, match=message):
            fetch_bytes(url, cfg=MediaConfig(fetch_timeout_s=5))
    with pytest.raises(MediaError, match=r"media.allow_http=false"):
        check_source("https://example.com/a.png", MediaConfig(allow_http=False))
