"""The client side of ``python -m epd.bench.serve``: its config, the media it hands an endpoint, and
one streamed request timed as the client sees it.

Times are the client's: a request's ``arrival`` is when it was due (its scheduled time, or when a
slot freed under a concurrency cap), each output token's time is when the chunk holding it arrived.
Tokens per chunk come from the chunk's ``token_ids`` when the endpoint returns them
(``endpoint.return_token_ids``: epd and vLLM do), else one per chunk with text, and tokens the final
``usage`` counts beyond those share the last chunk's time.
"""

from __future__ import annotations

import base64
import mimetypes
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

from epd.metrics import RequestRecord
from epd.workload import WorkloadRequest

MEDIA_MODES = ("inline", "http", "path")
MIME = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".mp4": "video/mp4", ".wav": "audio/wav"}
MIME |= {".flac": "audio/flac", ".mp3": "audio/mpeg", ".ogg": "audio/ogg", ".m4a": "audio/mp4", ".webm": "video/webm"}


@dataclass(kw_only=True)
class EndpointConfig:
    """The OpenAI-compatible server measured (the ``endpoint`` keys of ``epd.bench.serve``)."""

    url: str = "http://127.0.0.1:8000/v1"
    """Base URL of the API, with its ``/v1``."""
    model: str | None = None
    """``model`` sent with every request; None: the first model ``GET /v1/models`` lists."""
    api_key: str | None = None
    """Bearer key; None: the environment variable ``api_key_env``, else ``EMPTY`` (what vLLM and SGLang
    accept when they run without a key). Never written to results.json."""
    api_key_env: str = "OPENAI_API_KEY"
    media: str = "inline"
    """How local media reach the server: ``inline`` (``data:`` URIs in the body), ``http`` (URLs of a small
    HTTP server the bench starts on ``media_host``; the server must be allowed to fetch from it, for
    epd ``media.allow_private_addresses=true``) or ``path`` (absolute paths: a server on this host
    allowed to read them, for epd ``media.allowed_dirs=[<run dir>/media]``)."""
    media_host: str = "127.0.0.1"
    """Address the media server binds and puts in its URLs (one the endpoint can reach)."""
    return_token_ids: bool = True
    """Ask for each chunk's token ids (``extra_body.return_token_ids``: epd, vLLM); false for servers that
    refuse unknown fields."""
    extra_body: dict[str, Any] = field(default_factory=dict)
    """More fields for every request's body, e.g. ``{top_k: 1}`` or SGLang's ``{"no_stop_trim": true}``."""
    timeout_s: float = 600.0
    """Seconds one request may take before the client gives up (recorded as failed)."""
    label: str | None = None
    """The results' ``label`` (``epd.report`` names the run by it), e.g. ``vllm``; None: the URL."""

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"endpoint.url={self.url!r}: give the API's base URL, e.g. http://127.0.0.1:8000/v1")
        if self.media not in MEDIA_MODES:
            raise ValueError(f"endpoint.media={self.media!r}: choose one of {', '.join(MEDIA_MODES)}")
        if not 0 < self.timeout_s < float("inf"):
            raise ValueError(f"endpoint.timeout_s={self.timeout_s!r}: set a finite number of seconds > 0")


class MediaServer:
    """Serves exactly the files it was given, at ``http://<host>:<port>/<n>/<name>``, from a thread."""

    def __init__(self, host: str) -> None:
        self.files: dict[str, Path] = {}
        handler = partial(_FileHandler, self.files)
        self.httpd = ThreadingHTTPServer((host, 0), handler)
        self.base = f"http://{host}:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, name="epd-bench-media", daemon=True).start()

    def url(self, path: Path) -> str:
        key = f"/{len(self.files)}/{quote(path.name)}"
        self.files[key] = path
        return self.base + key

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _FileHandler(SimpleHTTPRequestHandler):
    def __init__(self, files: dict[str, Path], *args, **kwargs) -> None:
        self.files = files
        super().__init__(*args, **kwargs)

    def translate_path(self, path: str) -> str:
        found = self.files.get(path.split("?", 1)[0])
        return str(found) if found is not None else "/nonexistent/epd-bench"

    def log_message(self, format: str, *args) -> None:  # quiet
        pass


class MediaRewriter:
    """Rewrites each local media path of a request for ``endpoint.media`` (each file read once)."""

    def __init__(self, mode: str, server: MediaServer | None = None) -> None:
        self.mode = mode
        self.server = server
        self._done: dict[str, str] = {}

    def messages(self, messages: list[dict]) -> list[dict]:
        return [{**m, "content": self._content(m["content"])} for m in messages]

    def _content(self, content: Any) -> Any:
        if not isinstance(content, list):
            return content
        out = []
        for part in content:
            key = part.get("type") if isinstance(part, dict) else None
            ref = part.get(key) if key in ("image_url", "video_url", "audio_url") else None
            if isinstance(ref, dict) and isinstance(ref.get("url"), str):
                part = {**part, key: {**ref, "url": self.url(ref["url"])}}
            out.append(part)
        return out

    def url(self, url: str) -> str:
        local = url.removeprefix("file://")
        if self.mode == "path" or not local.startswith("/"):
            return url
        if url not in self._done:
            path = Path(local)
            if self.mode == "inline":
                mime = MIME.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                self._done[url] = f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"
            else:
                self._done[url] = self.server.url(path)
        return self._done[url]


async def send(client, endpoint: EndpointConfig, model: str, req: WorkloadRequest, messages, arrival: float):
    """Stream ``req`` to the endpoint; its ``RequestRecord`` as the client measured it."""
    import openai

    record = RequestRecord(id=req.id, arrival=arrival, warmup=req.warmup, phase=req.phase)
    extra = dict(endpoint.extra_body)
    if req.ignore_eos:
        extra["ignore_eos"] = True
    if req.top_k:
        extra["top_k"] = req.top_k
    if endpoint.return_token_ids:
        extra["return_token_ids"] = True
    optional = {"seed": req.seed, "stop": req.stop or None}
    kwargs = {k: v for k, v in optional.items() if v is not None}
    texts, usage = [], None
    try:
        stream = await client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=extra,
            **kwargs,
        )
        async for chunk in stream:
            now = time.time()
            usage = chunk.usage or usage
            for choice in chunk.choices:
                ids = getattr(choice, "token_ids", None)
                text = choice.delta.content if choice.delta is not None else None
                if ids:
                    record.output_token_ids.extend(ids)
                    record.token_times.extend([now] * len(ids))
                elif text:
                    record.token_times.append(now)
                texts.append(text or "")
                record.finish_reason = choice.finish_reason or record.finish_reason
    except openai.APIStatusError as exc:
        record.error = f"HTTP {exc.status_code}: {_message(exc)}"
    except openai.APIError as exc:  # connection refused or reset, timeout
        record.error = f"{type(exc).__name__}: {exc}"
    _finish(record, "".join(texts), usage)
    return record


def _finish(record: RequestRecord, text: str, usage) -> None:
    record.output_text = text
    if record.error is not None:
        record.finish_reason = "error"
    if usage is not None:
        record.num_prompt_tokens = usage.prompt_tokens
        missing = usage.completion_tokens - len(record.token_times)
        if missing > 0 and record.token_times and not record.output_token_ids:
            record.token_times.extend([record.token_times[-1]] * missing)
    if record.token_times:
        record.timestamps["first_token"] = record.token_times[0]
    from epd.metrics.records import stamp_latencies

    stamp_latencies(record)


def _message(exc) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body) if isinstance(body, dict) else {}
    return str(error.get("message") if isinstance(error, dict) and error.get("message") else exc.message)[:500]
