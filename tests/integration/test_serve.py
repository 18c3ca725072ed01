"""``python -m epd.serve`` on 2e1p as clients use it: the openai SDK and raw HTTP over loopback.

One server takes every test of this module (they run in order): its models, health and text
completions (against transformers), stop strings, each error status with its body, a client that
leaves mid-stream or before its first token (its request aborted everywhere: KV blocks back, the
encoders drop its item), 503 backpressure, the 504 deadline, ``/metrics`` through prometheus_client's
parser, and the records a served session leaves for ``epd.report``.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time

import httpx
import openai
import pytest
import torch

from tests.conftest import REPO
from tests.integration.serve_harness import Server, wait_for

LONG = 20_000  # output tokens of a request that outlives every test that starts one (tens of seconds on CPU)
TIMEOUT_S = 8
MAX_PENDING = 4
MAX_BODY = 1 << 20
MAX_WAIT_MS = 3000  # an image waits this long in its encoder for batch-mates: time to leave before it is encoded


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_qwen25vl):
    run_dir = tmp_path_factory.mktemp("serve") / "run"
    srv = Server(
        run_dir,
        "+topology=2e1p",
        "transfer=shm",
        f"model.path={tiny_qwen25vl}",
        f"server.request_timeout_s={TIMEOUT_S}",
        f"server.max_pending={MAX_PENDING}",
        f"server.max_body_bytes={MAX_BODY}",
        f"encoder.max_wait_ms={MAX_WAIT_MS}",
        "server.model_names=[tiny,tiny-alias]",
    ).wait_ready()
    yield srv
    if srv.proc.poll() is None:
        srv.kill()


def chat(server: Server, content, **kwargs):
    body = {"model": "tiny", "messages": [{"role": "user", "content": content}], "temperature": 0, **kwargs}
    return server.client().chat.completions.create(**body)


def idle_kv(server: Server) -> float:
    """Total KV blocks, once every block is free again (after the next heartbeat)."""
    return wait_for(lambda: (lambda f, t: t if t and f == t else 0)(*server.kv_blocks()), 20, "every KV block free")


def test_models_and_health(server):
    models = server.client().models.list().data
    assert [m.id for m in models] == ["tiny", "tiny-alias"]
    assert models[0].max_model_len > 0
    assert httpx.get(f"{server.base}/health").json() == {"status": "ok"}


def test_completions_equal_transformers(server, tiny_qwen25vl):
    from transformers import AutoTokenizer

    from epd.models.families.qwen_common import load_hf_model
    from tests.integration.oracle_utils import hf_model_class

    prompt = "The quick brown fox jumps over"
    client = server.client()
    out = client.completions.create(model="tiny-alias", prompt=prompt, max_tokens=8, temperature=0, extra_body={"return_token_ids": True})  # fmt: skip
    choice = out.choices[0]
    ids = AutoTokenizer.from_pretrained(tiny_qwen25vl)(prompt, return_tensors="pt")["input_ids"]
    model = load_hf_model(tiny_qwen25vl, False, torch.device("cpu"), torch.float32, hf_model_class(tiny_qwen25vl))
    with torch.inference_mode():
        reference = model.generate(input_ids=ids, do_sample=False, max_new_tokens=8)[0, ids.shape[1] :].tolist()
    assert choice.token_ids == reference
    assert out.usage.prompt_tokens == ids.shape[1] and out.usage.completion_tokens == 8
    chunks = client.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text


def test_stop_string_ends_the_text(server):
    parts = [{"type": "text", "text": "Count slowly please."}]
    full = chat(server, parts, max_tokens=24, extra_body={"ignore_eos": True})
    text = full.choices[0].message.content
    stop = next(text[i : i + 2] for i in range(4, len(text) - 2) if text[i : i + 2].strip() == text[i : i + 2])
    cut = text[: text.find(stop)]
    unstreamed = chat(server, parts, max_tokens=24, stop=[stop], extra_body={"ignore_eos": True})
    assert (unstreamed.choices[0].message.content, unstreamed.choices[0].finish_reason) == (cut, "stop")
    chunks = chat(server, parts, max_tokens=24, stop=stop, stream=True, extra_body={"ignore_eos": True})
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == cut


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_malformed_and_schema_errors_name_the_field(server):
    assert _error(server.post("/chat/completions", b'{"model": "tiny", "messages": ['), 400)["code"] == "invalid_json"
    msgs = [{"role": "user", "content": "hi"}]
    error = _error(server.post("/chat/completions", {"model": "tiny", "messages": msgs, "temperature": "hot"}), 400)
    assert error["param"] == "temperature" and error["type"] == "invalid_request_error"
    error = _error(server.post("/chat/completions", {"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}), 400)  # fmt: skip
    assert error["param"] == "messages.0.role"
    assert _error(server.post("/chat/completions", {"model": "tiny"}), 400)["param"] == "messages"
    assert _error(server.post("/chat/completions", {"model": "tiny", "messages": msgs, "n": 3}), 400)["param"] == "n"
    error = _error(server.post("/chat/completions", {"model": "tiny", "messages": msgs, "max_tokens": 0}), 400)
    assert error["param"] == "max_tokens"
    error = _error(server.post("/chat/completions", {"model": "nope", "messages": msgs}), 404)
    assert error["code"] == "model_not_found" and "tiny" in error["message"]
    with pytest.raises(openai.BadRequestError) as raised:  # the SDK sees the same
        chat(server, "hi", logprobs=True)
    assert raised.value.status_code == 400 and "logprobs" in str(raised.value)


def test_bad_media_names_the_part(server):
    garbage = "data:image/png;base64," + base64.b64encode(b"not an image at all" * 50).decode()
    parts = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": garbage}}]
    with pytest.raises(openai.BadRequestError) as raised:
        chat(server, parts, max_tokens=4)
    assert "media item 0" in str(raised.value), raised.value
    for bad, words in [
        ({"type": "image_url", "image_url": {"url": "/etc/hostname"}}, "media item 0"),  # no local folder allowed
        ({"type": "hologram", "hologram": {}}, "message 0"),
        ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "midi"}}, "message 0"),
    ]:
        error = _error(server.post("/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": [bad]}]}), 400)  # fmt: skip
        assert words in error["message"] and error["param"] == "messages", error


def test_prompt_over_the_context_gives_the_numbers(server):
    limit = server.client().models.list().data[0].max_model_len
    error = _error(server.post("/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "a b c d"}], "max_tokens": limit - 3}), 400)  # fmt: skip
    assert str(limit) in error["message"] and str(limit - 3) in error["message"] and "context" in error["message"]
    assert (error["param"], error["code"]) == ("messages", "context_length_exceeded")


def test_body_over_the_limit_is_413(server):
    body = b'{"model": "tiny", "messages": [{"role": "user", "content": "' + b"x" * (MAX_BODY + 10) + b'"}]}'
    error = _error(server.post("/chat/completions", body), 413)
    assert "max_body_bytes" in error["message"]


def test_client_leaving_mid_stream_frees_its_blocks(server):
    total = idle_kv(server)
    stream = chat(server, "Tell me everything.", max_tokens=LONG, stream=True, extra_body={"ignore_eos": True})
    for _, _chunk in zip(range(5), stream, strict=False):
        pass
    wait_for(lambda: server.kv_blocks()[0] < total, 10, "the request to hold KV blocks")
    stream.close()  # the connection goes: the server aborts the request on every rank
    start = time.time()
    idle_kv(server)
    assert time.time() - start < 10
    record = wait_for(lambda: [r for r in server.records() if r["finish_reason"] == "abort"], 10, "the abort record")[
        -1
    ]
    assert record["error"] == "aborted: the client disconnected" and 5 <= len(record["output_token_ids"]) < LONG


def test_client_leaving_before_its_first_token_drops_its_item(server, tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "red.png")
    uri = "data:image/png;base64," + base64.b64encode((tmp_path / "red.png").read_bytes()).decode()
    batches = sum(server.metrics()["epd_encoder_batches_total"].values())
    body = {"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}}]}]}  # fmt: skip
    with pytest.raises(httpx.ReadTimeout):  # the item waits MAX_WAIT_MS for batch-mates: the client leaves first
        server.post("/chat/completions", body, timeout=0.8)
    gone = wait_for(
        lambda: [r for r in server.records() if r["items"] and r["error"] == "aborted: the client disconnected"],
        10,
        "the record of the image request",
    )
    assert len(gone) == 1 and gone[0]["output_token_ids"] == []
    time.sleep(MAX_WAIT_MS / 1e3 + 2)  # past the batching wait and a heartbeat: the encoder dropped it unencoded
    assert sum(server.metrics()["epd_encoder_batches_total"].values()) == batches
    idle_kv(server)


def test_backpressure_is_503_at_once(server):
    client = server.client()
    held = [
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"hold {i}"}], max_tokens=LONG, stream=True,
            extra_body={"ignore_eos": True},
        )
        for i in range(MAX_PENDING)
    ]  # fmt: skip
    try:
        start = time.time()
        response = server.post(
            "/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "one more"}]}
        )
        assert time.time() - start < 1.0
        error = _error(response, 503)
        assert error["code"] == "overloaded" and response.headers["retry-after"] == "1"
        assert server.metrics()["epd_requests_pending"][()] == MAX_PENDING
    finally:
        for stream in held:
            stream.close()
    idle_kv(server)
    assert chat(server, "and now?", max_tokens=2).choices[0].finish_reason in ("length", "stop")


def test_deadline_is_504_and_frees_everything(server):
    total = idle_kv(server)
    start = time.time()
    response = server.post("/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "go on"}], "max_tokens": LONG, "ignore_eos": True})  # fmt: skip
    assert TIMEOUT_S - 0.5 < time.time() - start < TIMEOUT_S + 5
    assert _error(response, 504)["code"] == "timeout"
    assert idle_kv(server) == total
    record = [r for r in server.records() if (r["error"] or "").startswith("aborted: deadline")][-1]
    assert 0 < len(record["output_token_ids"]) < LONG


def test_metrics_parse_and_count(server):
    m = server.metrics()
    outcomes = {dict(labels)["outcome"]: value for labels, value in m["epd_requests_total"].items()}
    assert outcomes["length"] >= 3 and outcomes["stop"] >= 2
    assert outcomes["bad_request"] >= 8 and outcomes["not_found"] >= 1 and outcomes["too_large"] == 1
    assert outcomes["disconnected"] >= 2 + MAX_PENDING and outcomes["timeout"] == 1 and outcomes["unavailable"] >= 1
    assert m["epd_time_to_first_token_seconds_count"][()] >= 5
    assert m["epd_stage_seconds_count"][(("stage", "prefill"),)] >= 5
    assert m["epd_ready"][()] == 1.0 and m["epd_requests_pending"][()] == 0
    ranks = {dict(labels)["rank"] for labels in m["epd_kv_cache_total_blocks"]}
    assert ranks == {"2"}  # the language rank of 2e1p
    assert {dict(labels)["rank"] for labels in m["epd_encoder_busy_seconds_total"]} == {"0", "1"}


def test_session_results_for_epd_report(server):
    served = len(server.records())
    assert server.stop() == 0, server.output()
    results = server.results()
    assert len(results["requests"]) == served > 0
    assert results["summary"]["num_completed"] >= 6 and results["config"]["server"]["enabled"] is True
    proc = subprocess.run(
        [sys.executable, "-m", "epd.report", str(server.run_dir)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert not server.leftovers()
