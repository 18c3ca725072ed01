"""http(s) sources against a real http.server on 127.0.0.1: status, timeouts, byte limit while streaming.

127.0.0.1 is a private address, so every fetch here passes ``allow_private_addresses=True`` (``web``);
that the default refuses it, and redirects, are tested in test_media_policy.py.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from epd.media import MediaConfig, MediaError, fetch_bytes, load_image, load_video
from epd.media.synth import write_test_video

BODY = bytes(range(256)) * 40  # 10240 bytes


def web(**kwargs) -> MediaConfig:
    """A config that may fetch from this machine's test server."""
    return MediaConfig(allow_private_addresses=True, **kwargs)


class Handler(BaseHTTPRequestHandler):
    """Routes: /ok, /png, /video, /missing (404), /slow (headers late), /trickle (1 byte per 0.1 s),
    /huge (Content-Length 10 GB), /endless (no Content-Length, 64 KiB chunks until the client leaves)."""

    protocol_version = "HTTP/1.0"
    files: dict[str, bytes] = {}
    sent: dict[str, int] = {}  # bytes of body written per path, for the streaming-limit tests
    stop = threading.Event()

    def do_GET(self) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
            self._route()

    def _route(self) -> None:
        path = self.path
        if path in ("/ok", "/png", "/video"):
            self._send(200, {"/ok": BODY, **self.files}[path])
        elif path == "/missing":
            self.send_error(404, "Not Found")
        elif path == "/slow":
            self.stop.wait(5)  # released at teardown
            self._send(200, BODY)
        elif path == "/trickle":
            self.send_response(200)
            self.end_headers()
            for _ in range(50):
                if self.stop.wait(0.1):
                    return
                self.wfile.write(b"x")
                self.wfile.flush()
        elif path in ("/huge", "/endless"):
            self.send_response(200)
            if path == "/huge":
                self.send_header("Content-Length", str(10 << 30))
            self.end_headers()
            self.sent[path] = 0
            while self.sent[path] < (64 << 20) and not self.stop.is_set():
                self.wfile.write(b"\0" * (64 << 10))
                self.sent[path] += 64 << 10

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    buf = io.BytesIO()
    Image.new("RGB", (16, 8), (1, 2, 3)).save(buf, format="PNG")
    video = write_test_video(tmp_path_factory.mktemp("http") / "v.mp4", seconds=1, fps=10, size=(64, 48))
    Handler.files = {"/png": buf.getvalue(), "/video": video.read_bytes()}
    Handler.stop.clear()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = False  # server_close joins every handler thread: nothing is left running
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    Handler.stop.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_ok_and_decoders_over_http(server):
    assert fetch_bytes(f"{server}/ok", cfg=web()) == BODY
    assert load_image(f"{server}/png", cfg=web()).getpixel((0, 0)) == (1, 2, 3)
    clip = load_video(f"{server}/video", web(video_backend="pyav"))
    assert clip.frames.shape == (10, 48, 64, 3) and clip.fps == 10.0


def test_http_404(server):
    with pytest.raises(MediaError, match=r"cannot fetch http://127\.0\.0\.1:\d+/missing: HTTP 404 Not Found"):
        fetch_bytes(f"{server}/missing", cfg=web())


def test_slow_server_times_out(server):
    start = time.monotonic()
    with pytest.raises(MediaError, match=r"/slow timed out after 0\.3 s \(raise media.fetch_timeout_s\)"):
        fetch_bytes(f"{server}/slow", cfg=web(fetch_timeout_s=0.3))
    assert time.monotonic() - start < 2


def test_trickling_server_hits_the_whole_fetch_deadline(server):
    start = time.monotonic()  # every read returns within the timeout, the whole body does not
    with pytest.raises(MediaError, match=r"/trickle timed out after 0\.5 s"):
        fetch_bytes(f"{server}/trickle", cfg=web(fetch_timeout_s=0.5))
    assert time.monotonic() - start < 2


def test_oversize_with_content_length_is_refused_before_reading(server):
    with pytest.raises(MediaError, match=r"/huge is 10737418240 bytes \(Content-Length\), over media.max_bytes=100000"):
        fetch_bytes(f"{server}/huge", cfg=web(max_bytes=100_000))


def test_oversize_without_content_length_stops_reading(server):
    start = time.monotonic()
    with pytest.raises(
        MediaError, match=r"/endless is more than 100000 bytes \(stopped reading at \d+\), over media.max_bytes=100000"
    ):
        fetch_bytes(f"{server}/endless", cfg=web(max_bytes=100_000))
    assert time.monotonic() - start < 2
    time.sleep(0.2)  # the server notices the closed connection; it never got to write 64 MiB
    assert Handler.sent["/endless"] < (16 << 20)


def test_connection_refused():
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(MediaError, match=rf"cannot reach http://127\.0\.0\.1:{port}/x\.png: .*refused"):
        fetch_bytes(f"http://127.0.0.1:{port}/x.png", cfg=web(fetch_timeout_s=2))
