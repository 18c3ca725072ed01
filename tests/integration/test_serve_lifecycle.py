"""A server's life: ``/health`` is 503 until every rank has warmed up, the API key is enforced (and
never written anywhere), SIGTERM drains — no new request, those in flight finish, those past
``server.drain_timeout_s`` are aborted — and a second signal stops at once; on epd's own launcher
(1e1p) and in process (colocated: rank 0 passes the signal on to the frontend)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import openai
import pytest

from tests.integration.job_harness import _cmdline, _environ, descendants
from tests.integration.serve_harness import Server, wait_for

KEY = "sekret-key-for-tests"
MODEL = "served"
SHORT, LONG = 60, 20_000


async def consume(server: Server, prompt: str, max_tokens: int, got: dict, api_key: str = "none") -> None:
    """Stream one request; ``got[prompt]`` is its token count and, if the stream broke, the error."""
    got[prompt] = {"tokens": 0, "error": None, "finish": None}
    async with server.aclient(api_key=api_key) as client:
        try:
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=max_tokens,
                stream=True,
                extra_body={"ignore_eos": True, "return_token_ids": True},
            )
            async for chunk in stream:
                for choice in chunk.choices:
                    got[prompt]["tokens"] += len(getattr(choice, "token_ids", None) or [])
                    got[prompt]["finish"] = choice.finish_reason or got[prompt]["finish"]
        except openai.APIError as exc:
            got[prompt]["error"] = str(exc)


async def drain_scenario(server: Server, signals: list[float], api_key: str = "none") -> dict:
    """Two short streams and a long one; once all three have tokens, send each signal of ``signals``
    (seconds apart as listed) to the server's own process; returns what each stream got, plus what a
    request sent after the first signal was answered (``late``)."""
    got: dict = {}
    tasks = [
        asyncio.create_task(consume(server, "short one", SHORT, got, api_key)),
        asyncio.create_task(consume(server, "short two", SHORT, got, api_key)),
        asyncio.create_task(consume(server, "long", LONG, got, api_key)),
    ]
    while not (len(got) == 3 and all(g["tokens"] > 0 for g in got.values())):
        await asyncio.sleep(0.02)
    for i, gap in enumerate(signals):
        await asyncio.sleep(gap)
        os.kill(server.proc.pid, signal.SIGTERM)
        if i == 0:
            await asyncio.sleep(0.3)
            late = await asyncio.to_thread(
                server.post,
                "/chat/completions",
                {"model": MODEL, "messages": [{"role": "user", "content": "too late"}]},
                {"authorization": f"Bearer {api_key}"},
            )
            got["late"] = (late.status_code, late.json()["error"]["code"], late.headers.get("retry-after"))
            got["health"] = httpx.get(f"{server.base}/health").json()["status"]
    await asyncio.gather(*tasks)
    return got


def _stop_rank_while_starting(server: Server, rank: int) -> int:
    """SIGSTOP rank ``rank`` of ``server`` as soon as its process exists (it is still importing)."""

    def find() -> int | None:
        for pid in descendants(server.proc.pid):
            if "-m epd.launch.worker" in _cmdline(pid) and _environ(pid).get("RANK") == str(rank):
                return pid
        return None

    pid = wait_for(find, 60, f"rank {rank}'s process", interval=0.01)
    os.kill(pid, signal.SIGSTOP)
    return pid


@pytest.mark.slow
def test_health_key_and_drain_on_epds_launcher(tmp_path, tiny_qwen25vl):
    server = Server(
        tmp_path / "run",
        "+topology=1e1p",
        "transfer=zmq",
        f"model.path={tiny_qwen25vl}",
        f"server.model_names=[{MODEL}]",
        "server.drain_timeout_s=8",
        env={"EPD_API_KEY": KEY},
    )
    try:
        stopped = _stop_rank_while_starting(server, 1)
        server.wait_listening()
        try:
            for _ in range(10):  # the language rank is stopped: not ready, and requests are refused at once
                assert httpx.get(f"{server.base}/health").json() == {"status": "starting"}
                response = server.post("/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}, {"authorization": f"Bearer {KEY}"})  # fmt: skip
                assert response.status_code == 503 and response.json()["error"]["code"] == "starting"
                time.sleep(0.2)
        finally:
            os.kill(stopped, signal.SIGCONT)
        server.wait_ready()

        with pytest.raises(openai.AuthenticationError):
            server.client(api_key="wrong").models.list()
        assert server.post("/chat/completions", {"model": MODEL, "messages": []}).status_code == 401  # no key
        assert server.client(api_key=KEY).models.list().data[0].id == MODEL
        assert httpx.get(f"{server.base}/metrics").status_code == 200  # health and metrics need no key

        got = asyncio.run(drain_scenario(server, [0.0], api_key=KEY))
        assert server.proc.wait(timeout=60) == 0, server.output()
    finally:
        if server.proc.poll() is None:
            server.kill()
    assert got["late"] == (503, "shutting_down", "1") and got["health"] == "draining"
    for name in ("short one", "short two"):  # finished in the drain
        assert got[name] == {"tokens": SHORT, "error": None, "finish": "length"}, got
    assert got["long"]["error"] is not None and 0 < got["long"]["tokens"] < LONG  # aborted at the drain deadline
    requests = {r["id"]: r for r in server.results()["requests"]}
    assert sum(1 for r in requests.values() if r["error"] is None and len(r["output_token_ids"]) == SHORT) == 2
    assert any((r["error"] or "").startswith("aborted: the server is shutting down") for r in requests.values())
    for path in server.run_dir.rglob("*"):  # only the key's hash went past the entry point
        assert not path.is_file() or KEY.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_drain_then_second_signal_in_process(tmp_path, tiny_qwen25vl):
    server = Server(tmp_path / "run", f"model.path={tiny_qwen25vl}", f"server.model_names=[{MODEL}]", "server.drain_timeout_s=120")  # fmt: skip
    try:
        server.wait_ready()
        start = time.time()
        got = asyncio.run(drain_scenario(server, [0.0, 2.0]))  # the second SIGTERM: stop now, not in 120 s
        code = server.proc.wait(timeout=60)
    finally:
        if server.proc.poll() is None:
            server.kill()
    assert code == 128 + signal.SIGTERM, server.output()
    assert time.time() - start < 60
    assert got["late"][:2] == (503, "shutting_down")
    for name in ("short one", "short two"):
        assert got[name]["tokens"] == SHORT and got[name]["error"] is None, got
    assert got["long"]["error"] is not None
    summary = server.results()["summary"]
    assert summary["status"] == "cut_short" and "SIGTERM" in summary["cut_short_reason"]
