"""Requests that once crashed or hung a job fail alone, at once, with a message naming what to fix,
while the good ones in the same run finish: out-of-range integers, NaN, lone surrogates, a prompt over
the context, media that is a FIFO, a device, a 4 GiB file, or outside the allowed folders, and a
percent-encoded ``data:`` URI (which decodes)."""

from __future__ import annotations

import base64
import json
import os
import time
from urllib.parse import quote_from_bytes

import pytest

from tests.conftest import read_results, run_epd
from tests.integration.oracle_utils import image_part, random_image

pytestmark = pytest.mark.slow


def _line(rid: str, parts, **fields) -> str:
    body = {"id": rid, "max_tokens": 4, "messages": [{"role": "user", "content": parts}], **fields}
    return json.dumps(body)


def test_bad_requests_fail_alone(tmp_path, tiny_qwen25vl):
    d = tmp_path / "work"
    d.mkdir()
    good = random_image(d / "good.png", (64, 48), 1)
    png = (d / "good.png").read_bytes()
    os.mkfifo(d / "pipe.png")  # nobody ever writes it: a read would block forever
    (d / "zero.png").symlink_to("/dev/zero")  # inside the folder, but it resolves outside
    with open(d / "huge.png", "wb") as f:
        f.truncate(4 << 30)  # 4 GiB, sparse: refused by its size, never read
    hi = {"type": "text", "text": "hi"}
    lines = [
        _line("ok", [image_part(good), hi]),
        _line("ok-percent-data-uri", [image_part("data:image/png," + quote_from_bytes(png)), hi]),
        _line("ok-base64", [image_part("data:image/png;base64," + base64.b64encode(png).decode()), hi]),
        _line("max-tokens-2**64", [hi], max_tokens=2**64),
        _line("max-tokens-1e9", [hi], max_tokens=10**9),
        _line("seed-2**64", [hi], seed=2**64),
        _line("nan-temperature", [hi], temperature=float("nan")),
        json.dumps({"id": "surrogate-\ud800", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]}),
        _line("surrogate-stop", [hi], stop=["\ud800"]),
        _line("too-long-prompt", [{"type": "text", "text": "word " * 700}]),
        _line("fifo", [image_part(str(d / "pipe.png")), hi]),
        _line("symlink-to-dev-zero", [image_part(str(d / "zero.png")), hi]),
        _line("huge-file", [image_part(str(d / "huge.png")), hi]),
        _line("etc-passwd", [image_part("../../../../etc/passwd"), hi]),
        _line("etc-shadow", [image_part("file:///etc/shadow"), hi]),
        _line("dev-zero", [image_part("/dev/zero"), hi]),
        _line("shadow-path", [image_part("/etc/shadow"), hi]),
        _line("missing-path", [image_part("/etc/epd-no-such-file"), hi]),
    ]
    path = d / "requests.jsonl"
    path.write_text("\n".join(lines) + "\n")
    start = time.time()
    run_epd(
        tmp_path / "run",
        "+topology=1e1p",
        "transfer=shm",
        f"model.path={tiny_qwen25vl}",
        "workload=file",
        f"workload.path={path}",
        "engine.max_model_len=512",
        code=3,
    )
    assert time.time() - start < 120, "nothing may hang"
    got = {r["id"]: r for r in read_results(tmp_path / "run")["requests"]}
    assert len(got) == len(lines)
    for rid in ("ok", "ok-percent-data-uri", "ok-base64"):
        assert got[rid]["error"] is None and len(got[rid]["output_token_ids"]) == 4, got[rid]["error"]
    expect = {
        "max-tokens-2**64": "max_tokens",
        "max-tokens-1e9": "max_tokens=1000000000 is out of range",
        "seed-2**64": "seed",
        "nan-temperature": "temperature",
        "file-8": "Unicode",  # the line's own id is not valid Unicode: it gets the line's
        "surrogate-stop": "Unicode",
        "too-long-prompt": "over the context of 512",
        "fifo": "not a regular file",
        "symlink-to-dev-zero": "media.allowed_dirs",
        "huge-file": "max_bytes",
        "etc-passwd": "media.allowed_dirs",
        "etc-shadow": "media.allowed_dirs",
        "dev-zero": "media.allowed_dirs",
        "shadow-path": "media.allowed_dirs",
        "missing-path": "media.allowed_dirs",
    }
    for rid, words in expect.items():
        assert got[rid]["error"] is not None and words in got[rid]["error"], (rid, got[rid]["error"])
        assert got[rid]["output_token_ids"] == []
    # a refused path says the same whether the file exists or not
    shadow, missing = got["shadow-path"]["error"], got["missing-path"]["error"]
    assert shadow.replace("/etc/shadow", "X") == missing.replace("/etc/epd-no-such-file", "X")
