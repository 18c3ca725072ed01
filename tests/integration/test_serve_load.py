"""Load on loopback: 2,000 requests from 64 concurrent clients (the openai SDK) to a 2e1p server of
the tiny model. Nothing is lost: every request gets its complete answer (exactly ``max_tokens``
tokens, streamed or not) or its 400 (the bad ones mixed in); with more clients than
``server.max_pending`` some are turned away with 503 and ``Retry-After``, and a client that waits and
sends again is served (as a well-behaved client would do); the server's memory after the load is within 10% of what it was
after a warm-up; no KV block stays taken and no shm segment stays behind (a ``transfer.shm_dir`` of
the test's own), neither while the server runs nor after it stopped."""

from __future__ import annotations

import asyncio
import base64
import io
import random
import uuid
from collections import Counter
from pathlib import Path

import openai
import pytest
from PIL import Image

from tests.integration.serve_harness import Server, wait_for

NUM_REQUESTS, WARMUP, CONCURRENCY, MAX_PENDING = 2000, 200, 64, 56
MAX_TOKENS = 6


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def image_uri(seed: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (40 + seed % 24, 32), (seed % 256, 80, 160)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def request_of(i: int) -> tuple[dict, str]:
    """The body of request ``i`` and what it must get: ``ok`` or ``400``."""
    rng = random.Random(i)
    words = " ".join(
        rng.choice(["red", "cat", "runs", "blue", "sky", "over", "the"]) for _ in range(rng.randint(3, 30))
    )
    content: list[dict] = [{"type": "text", "text": words}]
    expect = "ok"
    if i % 7 == 0:
        content.insert(0, {"type": "image_url", "image_url": {"url": image_uri(i)}})
    if i % 97 == 0:  # a refused local file: 400 naming the part
        content.append({"type": "image_url", "image_url": {"url": f"/tmp/{uuid.uuid4().hex}.png"}})
        expect = "400"
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": MAX_TOKENS, "temperature": rng.choice([0.0, 0.7]), "stream": i % 2 == 0}  # fmt: skip
    return body, expect


async def one(client: openai.AsyncOpenAI, body: dict) -> str:
    """``ok`` for a complete answer, else the HTTP status (anything else fails the test)."""
    extra = {"ignore_eos": True, "return_token_ids": True}
    try:
        if body["stream"]:
            ids, finish = [], None
            stream = await client.chat.completions.create(model="tiny", **body, extra_body=extra)
            async for chunk in stream:
                for choice in chunk.choices:
                    ids += choice.token_ids or []
                    finish = choice.finish_reason or finish
            return "ok" if len(ids) == MAX_TOKENS and finish == "length" else f"incomplete stream {len(ids)} {finish}"
        out = await client.chat.completions.create(model="tiny", **body, extra_body=extra)
        choice = out.choices[0]
        complete = (
            len(choice.token_ids) == out.usage.completion_tokens == MAX_TOKENS and choice.finish_reason == "length"
        )
        return "ok" if complete else f"incomplete {out.usage.completion_tokens} {choice.finish_reason}"
    except openai.APIStatusError as exc:
        assert exc.status_code != 503 or exc.response.headers.get("retry-after") == "1"
        return str(exc.status_code)


MAX_RETRIES = 120


async def load(server: Server, indices: range) -> tuple[list[tuple[str, str]], int]:
    """(expected, got) of every request of ``indices``, ``CONCURRENCY`` at a time, each sent again
    after its ``Retry-After`` while it gets 503; and how many 503s there were."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in indices:
        queue.put_nowait(i)
    out, turned_away = [], 0
    async with server.aclient(timeout=300) as client:

        async def worker() -> None:
            nonlocal turned_away
            while not queue.empty():
                body, expect = request_of(queue.get_nowait())
                for _ in range(MAX_RETRIES):
                    got = await one(client, body)
                    if got != "503":
                        break
                    turned_away += 1
                    await asyncio.sleep(1.0)  # its Retry-After
                out.append((expect, got))

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return out, turned_away


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_thousand_requests_lose_nothing(tmp_path, tiny_qwen25vl):
    shm_dir = Path("/dev/shm") / f"epd-load-{uuid.uuid4().hex[:8]}"
    shm_dir.mkdir()
    server = Server(
        tmp_path / "run",
        "+topology=2e1p",
        "transfer=shm",
        f"transfer.shm_dir={shm_dir}",
        f"model.path={tiny_qwen25vl}",
        "server.model_names=[tiny]",
        f"server.max_pending={MAX_PENDING}",
        "logger.quiet=true",
    )
    try:
        server.wait_ready()
        warm, _ = asyncio.run(load(server, range(NUM_REQUESTS, NUM_REQUESTS + WARMUP)))
        assert all(got == expect for expect, got in warm), Counter(warm)
        rss_warm = rss_bytes(server.frontend_pid)
        results, turned_away = asyncio.run(load(server, range(NUM_REQUESTS)))
        rss_after = rss_bytes(server.frontend_pid)
        free, total = wait_for(lambda: (lambda f, t: (f, t) if t and f == t else None)(*server.kv_blocks()), 30, "free KV")  # fmt: skip
        segments_while_up = sorted(p.name for p in shm_dir.iterdir())
        pending = server.metrics()["epd_requests_pending"][()]
        code = server.stop()
    finally:
        if server.proc.poll() is None:
            server.kill()
        segments_after = sorted(p.name for p in shm_dir.iterdir())
        for leftover in shm_dir.iterdir():
            leftover.unlink()
        shm_dir.rmdir()
    outcomes = Counter(got if got != expect else "as expected" for expect, got in results)
    print(
        f"load: {dict(outcomes)}, {turned_away} times 503 and sent again; frontend RSS {rss_warm / 2**20:.0f} MiB after warm-up, {rss_after / 2**20:.0f} MiB after"
    )
    assert outcomes == {"as expected": NUM_REQUESTS}, outcomes  # a complete answer or its 400, nothing else
    assert turned_away > 0  # 64 clients against 56 pending: backpressure must have answered some with 503
    assert abs(rss_after - rss_warm) <= 0.1 * rss_warm, (rss_warm, rss_after)
    assert free == total and pending == 0
    assert segments_while_up == [] and segments_after == []
    assert code == 0, server.output()
    summary = server.results()["summary"]
    assert summary["num_requests"] == WARMUP + NUM_REQUESTS  # every admitted request recorded once
