"""file workload: requests read from a JSONL file, one OpenAI chat-completions body per line.

Each line is an object with `messages` (system/user/assistant turns whose content is a string
or a list of parts: {"type": "text", "text"}, {"type": "image_url", "image_url": {"url"}} and
likewise `video_url`, `audio_url`, or OpenAI's {"type": "input_audio", "input_audio": {"data":
<base64>, "format": "wav"|"mp3"|"flac"}}) and optionally `max_tokens` (or
`max_completion_tokens`; default `output_len`), `temperature`, `ignore_eos`, `seed` and `id`
(default "file-<line>"). Other keys (`model`, `stream`, ...) are ignored. Blank lines are skipped.

Media urls may be local paths (relative ones resolve against the JSONL file's directory; they
become absolute), file:// or http(s) URLs or data: URIs (kept as given). An input_audio part
becomes {"type": "audio_url", "audio_url": {"url": "data:audio/<format>;base64,<data>"}}, so the
rest of epd sees one form of audio. Whether media exist and decode is checked by the encoder
that fetches them (see `resolve_url`), not here.

The first `warmup_requests` requests are warmup; after them at most `num_requests` are read
(0 = the rest of the file). A mistake in the file as a whole (missing, not UTF-8, a line that is not
JSON, no valid request at all) raises ValueError naming file, line and problem, before anything
starts. A line that is JSON but not a valid request (max_tokens 0, no messages, a NaN temperature,
a duplicate id, ...) becomes a request carrying that error: it fails alone and the others run.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from epd.workload.arrivals import assign_arrivals
from epd.workload.base import WorkloadConfig, WorkloadRequest

ROLES = ("system", "user", "assistant")
MEDIA_PART_TYPES = ("image_url", "video_url", "audio_url")
PART_TYPES = ("text", *MEDIA_PART_TYPES, "input_audio")
INPUT_AUDIO_FORMATS = ("wav", "mp3", "flac")


class WorkloadFileError(ValueError):
    """A workload file, or one of its lines, is malformed; the message says where and why."""


def build(cfg: WorkloadConfig, media_dir: Path, tokenizer: Any = None) -> list[WorkloadRequest]:
    """Read, validate and time the file's requests (`media_dir` and `tokenizer` are unused)."""
    path = Path(cfg.path or "").expanduser().absolute()
    if not path.is_file():
        raise WorkloadFileError(f"workload.path={cfg.path!r}: no such file ({path})")
    limit = cfg.warmup_requests + cfg.num_requests if cfg.num_requests > 0 else None
    requests: list[WorkloadRequest] = []
    line_of_id: dict[str, int] = {}
    try:
        with path.open(encoding="utf-8") as lines:
            for lineno, line in enumerate(lines, start=1):
                if limit is not None and len(requests) == limit:
                    break
                if not line.strip():
                    continue
                request = parse_line(line, cfg, path=path, lineno=lineno)
                if request.error is None and request.id in line_of_id:
                    request.error = (
                        f"{path.name}:{lineno}: id {request.id!r} already used on line {line_of_id[request.id]}"
                    )
                line_of_id.setdefault(request.id, lineno)
                requests.append(request)
    except UnicodeDecodeError as error:
        raise WorkloadFileError(f"{path}: not UTF-8 text ({error})") from None
    if requests and all(r.error is not None for r in requests):
        raise WorkloadFileError(f"{path}: no line is a valid request; the first problem: {requests[0].error}")
    if len(requests) <= cfg.warmup_requests:
        raise WorkloadFileError(
            f"{path}: {len(requests)} requests, none left to measure after "
            f"workload.warmup_requests={cfg.warmup_requests}; add lines or lower warmup_requests"
        )
    for request in requests[: cfg.warmup_requests]:
        request.warmup = True
    return assign_arrivals(requests, cfg)


def parse_line(line: str, cfg: WorkloadConfig, *, path: Path, lineno: int) -> WorkloadRequest:
    """Line `lineno` of JSONL file `path` as a request. A line that is not JSON raises (the file is
    broken); a JSON value that is not a valid request comes back carrying its `error`
    ("<file>:<line>: <problem>")."""
    where = f"{path}:{lineno}"
    try:
        body = json.loads(line)
    except json.JSONDecodeError as error:
        raise WorkloadFileError(f"{where}: not valid JSON ({error})") from None
    default_id = f"file-{lineno}"
    try:
        _check_unicode(body, "")
        return _parse_body(body, cfg, path.parent, default_id=default_id)
    except WorkloadFileError as error:
        request_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(request_id, str) or not _valid_unicode(request_id) or not request_id:
            request_id = default_id
        return WorkloadRequest(id=request_id, messages=[], max_tokens=1, error=f"{path.name}:{lineno}: {error}")


def _valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_unicode(value: Any, where: str) -> None:
    """Every string of a JSON value encodes as UTF-8 (JSON's \\ud800 escapes can make lone surrogates)."""
    if isinstance(value, str):
        if not _valid_unicode(value):
            raise WorkloadFileError(f"{where or 'a string'}: not valid Unicode (a lone surrogate)")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_unicode(key, where)
            _check_unicode(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_unicode(item, f"{where}[{i}]")


def _parse_body(body: Any, cfg: WorkloadConfig, base_dir: Path, default_id: str) -> WorkloadRequest:
    if not isinstance(body, dict):
        raise WorkloadFileError(f"expected a JSON object (a chat-completions body), got {type(body).__name__}")
    if "messages" not in body:
        raise WorkloadFileError("missing 'messages'")
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        raise WorkloadFileError("'messages' must be a non-empty list of {role, content} objects")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", cfg.output_len))
    if not _is_int(max_tokens) or not 1 <= max_tokens < 2**31:
        raise WorkloadFileError(f"max_tokens={max_tokens!r}: must be an integer from 1 to 2**31-1")
    temperature = body.get("temperature", cfg.temperature)
    if not isinstance(temperature, int | float) or isinstance(temperature, bool) or not 0 <= temperature < math.inf:
        raise WorkloadFileError(f"temperature={temperature!r}: must be a finite number >= 0")
    ignore_eos = body.get("ignore_eos", cfg.ignore_eos)
    if not isinstance(ignore_eos, bool):
        raise WorkloadFileError(f"ignore_eos={ignore_eos!r}: must be true or false")
    seed = body.get("seed")
    if seed is not None and (not _is_int(seed) or not -(2**63) <= seed < 2**63):
        raise WorkloadFileError(f"seed={seed!r}: must be a 64-bit integer or null")
    top_k, top_p = body.get("top_k", 0), body.get("top_p", 1.0)
    if not _is_int(top_k) or not 0 <= top_k < 2**31:
        raise WorkloadFileError(f"top_k={top_k!r}: must be an integer >= 0 (0 = off)")
    if not isinstance(top_p, int | float) or isinstance(top_p, bool) or not 0 < top_p <= 1:
        raise WorkloadFileError(f"top_p={top_p!r}: must be a number in (0, 1]")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(x, str) and x for x in stop):
        raise WorkloadFileError(f"stop={body.get('stop')!r}: must be a non-empty string or a list of them")
    request_id = body.get("id", default_id)
    if not isinstance(request_id, str | int) or isinstance(request_id, bool) or request_id == "":
        raise WorkloadFileError(f"id={request_id!r}: must be a non-empty string")
    return WorkloadRequest(
        id=str(request_id),
        messages=[_parse_message(message, f"messages[{i}]", base_dir) for i, message in enumerate(messages)],
        max_tokens=max_tokens,
        temperature=float(temperature),
        ignore_eos=ignore_eos,
        seed=seed,
        top_k=top_k,
        top_p=float(top_p),
        stop=stop,
    )


def _parse_message(message: Any, where: str, base_dir: Path) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise WorkloadFileError(f"{where}: expected an object with 'role' and 'content'")
    role = message.get("role")
    if role not in ROLES:
        raise WorkloadFileError(f"{where}.role={role!r}: expected one of {list(ROLES)}")
    content = message.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise WorkloadFileError(f"{where}.content: expected a string or a list of parts, got {type(content).__name__}")
    parts = [_parse_part(part, f"{where}.content[{i}]", base_dir) for i, part in enumerate(content)]
    return {"role": role, "content": parts}


def _parse_part(part: Any, where: str, base_dir: Path) -> dict[str, Any]:
    part_type = part.get("type") if isinstance(part, dict) else None
    if part_type == "text":
        if not isinstance(part.get("text"), str):
            raise WorkloadFileError(f"{where}: a text part needs a string 'text'")
        return {"type": "text", "text": part["text"]}
    if part_type == "input_audio":
        return _parse_input_audio(part.get("input_audio"), where)
    if part_type not in MEDIA_PART_TYPES:
        raise WorkloadFileError(f"{where}.type={part_type!r}: unknown part type; expected one of {list(PART_TYPES)}")
    media = part.get(part_type)
    media = {"url": media} if isinstance(media, str) else media
    if not isinstance(media, dict) or not isinstance(media.get("url"), str) or not media["url"]:
        raise WorkloadFileError(f'{where}: expected "{part_type}": {{"url": "<path or URL>"}}')
    try:
        url = resolve_url(media["url"], base_dir)
    except WorkloadFileError as error:
        raise WorkloadFileError(f"{where}: {error}") from None
    return {"type": part_type, part_type: {**media, "url": url}}


def _parse_input_audio(audio: Any, where: str) -> dict[str, Any]:
    """An OpenAI input_audio part as the audio_url part with the same bytes in a data: URI."""
    if not isinstance(audio, dict) or not isinstance(audio.get("data"), str) or "format" not in audio:
        raise WorkloadFileError(
            f'{where}: expected "input_audio": {{"data": "<base64>", "format": {"|".join(INPUT_AUDIO_FORMATS)}}}'
        )
    audio_format = audio["format"]
    if audio_format not in INPUT_AUDIO_FORMATS:
        raise WorkloadFileError(
            f"{where}.input_audio.format={audio_format!r}: expected one of {list(INPUT_AUDIO_FORMATS)}"
        )
    data = audio["data"]
    try:
        num_bytes = len(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError) as error:
        raise WorkloadFileError(f"{where}.input_audio.data {_short(data)} is not valid base64 ({error})") from None
    if num_bytes == 0:
        raise WorkloadFileError(f"{where}.input_audio.data is empty")
    return {"type": "audio_url", "audio_url": {"url": f"data:audio/{audio_format};base64,{data}"}}


def resolve_url(url: str, base_dir: Path) -> str:
    """A media url as the encoder will fetch it: a relative local path becomes absolute (from `base_dir`).

    Only the form is checked here. Whether the media exists and decodes is checked where it is
    fetched, so a missing or corrupt file fails its own request and the rest of the run goes on.
    """
    if url.startswith(("data:", "http://", "https://")):
        return url
    if url.startswith("file:"):
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise WorkloadFileError(
                f"{url!r} names host {parsed.netloc!r}; write file:///absolute/path (three slashes)"
            )
        return url
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", url):
        raise WorkloadFileError(f"{_short(url)}: unsupported scheme; use a local path, file:// or data:")
    return os.path.normpath(base_dir / Path(url).expanduser())  # an absolute path replaces base_dir


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(url: str, limit: int = 48) -> str:
    return repr(url if len(url) <= limit else url[:limit] + "...")
