"""The server's parts without processes: request bodies, error mapping, streamed text, the bridge
between the server's thread and the frontend's, the metrics, and the answers as the openai SDK's own
types read them."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time

import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from epd.metrics import RequestRecord
from epd.server.config import ServerConfig
from epd.server.errors import DISCONNECTED, ApiError, error_of_record
from epd.server.metrics import ServerMetrics
from epd.server.responses import Reply
from epd.server.schemas import ChatRequest, CompletionRequest, parse_body
from epd.server.source import HttpSource, RequestHandle
from epd.server.stream import TextStream
from epd.workload import WorkloadRequest


def _parse_error(model, body: bytes) -> ApiError:
    with pytest.raises(ApiError) as raised:
        parse_body(model, body)
    assert raised.value.status == 400
    return raised.value


def test_chat_body_becomes_a_request_with_openai_defaults():
    body = b'{"model": "m", "messages": [{"role": "developer", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}], "max_completion_tokens": 7, "max_tokens": 99, "stop": "END", "top_k": -1, "seed": 5}'  # fmt: skip
    req = parse_body(ChatRequest, body).to_request(default_max_tokens=256)
    assert req.id.startswith("chatcmpl-") and req.prompt is None
    assert req.messages[0] == {"role": "system", "content": "be brief"}
    assert (req.max_tokens, req.temperature, req.top_p, req.top_k, req.stop, req.seed) == (7, 1.0, 1.0, 0, ["END"], 5)
    assert parse_body(ChatRequest, b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}').to_request(256).max_tokens == 256  # fmt: skip
    text = parse_body(CompletionRequest, b'{"model": "m", "prompt": ["once"], "temperature": 0}').to_request(16)
    assert (text.prompt, text.messages, text.max_tokens, text.temperature) == ("once", [], 16, 0.0)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "0"}', "temperature"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": true}', "max_tokens"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "top_p": 1.5}', "top_p"),
        (b'{"model": "m", "messages": [{"role": "user"}]}', "messages.0.content"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}', "n"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "presence_penalty": 0.5}',
            "presence_penalty",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": 1}}',
            "stream_options.include_usage",
        ),  # fmt: skip
    ],
)
def test_schema_errors_name_the_field(body, param):
    error = _parse_error(ChatRequest, body)
    assert error.param == param and param.split(".")[0] in error.message


def test_neutral_values_of_unsupported_fields_pass_and_unknown_fields_are_ignored():
    parse_body(ChatRequest, b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "logprobs": false, "presence_penalty": 0, "n": 1, "user": "u", "whatever": 3}')  # fmt: skip
    assert _parse_error(ChatRequest, b'{"model": "m", ').code == "invalid_json"
    assert _parse_error(CompletionRequest, b'{"model": "m", "prompt": ["a", "b"]}').param == "prompt"
    assert _parse_error(CompletionRequest, b'{"model": "m", "prompt": "a", "echo": true}').param == "echo"


def test_record_errors_map_to_statuses():
    assert error_of_record("bad request: max_tokens=0 is out of range", 0, 1).param == "max_tokens"
    bad_media = error_of_record("bad request: media item 1: /x is not under media.allowed_dirs", 0, 1)
    assert (bad_media.status, bad_media.param) == (400, "messages")
    assert error_of_record("media item 0: the image could not be loaded: ...", 0, 1).status == 400
    assert error_of_record("aborted: deadline: not finished within ...", 3, 1).status == 504
    drained = error_of_record("aborted: the server is shutting down (...)", 3, 2)
    assert (drained.status, drained.headers) == (503, {"Retry-After": "2"})
    assert error_of_record("decode failed: CUDA error", 4, 1).status == 500
    for too_long in (
        "bad request: the prompt (before media tokens) has 9 tokens and max_tokens is 99: 108 tokens, over the context of 100 (...)",
        "the prompt (with placeholders) has 90 tokens and max_tokens is 20: 110 tokens, more than the KV cache holds (100)",
    ):  # fmt: skip
        error = error_of_record(too_long, 0, 1)
        assert (error.status, error.param, error.code) == (400, "messages", "context_length_exceeded")
    assert error_of_record("bad request: stop[2] is not valid Unicode", 0, 1).param == "stop"
    assert error_of_record("bad request: id 'x' is already in flight", 0, 1).param is None
    assert error_of_record(DISCONNECTED, 0, 1).status == 500  # (never answered: the client is gone)


def test_server_config_checks_and_hashes_the_key():
    with pytest.raises(ValueError, match="server.host"):
        ServerConfig(host="localhost")
    with pytest.raises(ValueError, match="server.max_pending"):
        ServerConfig(max_pending=0)
    with pytest.raises(ValueError, match="server.request_timeout_s"):
        ServerConfig(request_timeout_s=float("inf"))
    cfg = ServerConfig(api_key_env="MY_KEY").with_key({"MY_KEY": "s3cret"})
    assert cfg.api_key is None and cfg.api_key_sha256 == hashlib.sha256(b"s3cret").hexdigest()
    given = ServerConfig(api_key="direct").with_key({"EPD_API_KEY": "ignored"})
    assert given.api_key_sha256 == hashlib.sha256(b"direct").hexdigest()
    assert ServerConfig().with_key({}).api_key_sha256 is None


@pytest.fixture(scope="module")
def tokenizer(tiny_qwen25vl):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_qwen25vl)


def test_text_stream_adds_up_to_the_final_text(tokenizer):
    ids = tokenizer("Hello wörld, ünïcode 日本語 text — and more words here.", add_special_tokens=False)["input_ids"]
    final = tokenizer.decode(ids, skip_special_tokens=True)
    stream = TextStream(lambda t: tokenizer.decode(t, skip_special_tokens=True), stop=[])
    deltas = [stream.add([i]) for i in ids]
    assert all("\ufffd" not in d for d in deltas)  # never half a character
    assert "".join(deltas) + stream.finish(final) == final


def test_text_stream_holds_back_what_a_stop_string_could_take(tokenizer):
    ids = tokenizer("alpha beta STOP gamma", add_special_tokens=False)["input_ids"]
    decode = lambda t: tokenizer.decode(t, skip_special_tokens=True)  # noqa: E731
    stream = TextStream(decode, stop=["STOP", "xyz"])
    sent = ""
    for k, i in enumerate(ids):
        if "STOP" in decode(ids[: k + 1]):  # the frontend ends the request here: its final text comes instead
            break
        sent += stream.add([i])
        assert "S" not in sent[len("alpha beta ") :], sent  # nothing of a stop string that may yet complete
    cut = "alpha beta "
    assert cut.startswith(sent) and sent + stream.finish(cut) == cut


def test_answers_read_as_the_sdks_types():
    from openai.types import Completion
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    record = RequestRecord(id="r", arrival=0.0, output_token_ids=[5, 6], output_text="hi", num_prompt_tokens=3)
    record.finish_reason = "length"
    chat = ChatCompletion.model_validate_json(Reply("chatcmpl-1", "m", "chat", return_token_ids=True).body(record))
    assert (chat.choices[0].message.content, chat.usage.total_tokens, chat.choices[0].token_ids) == ("hi", 5, [5, 6])
    reply = Reply("chatcmpl-1", "m", "chat", include_usage=True)
    for event in (reply.chunk("h", [5], first=True), reply.chunk("i", [6], "length"), reply.usage_chunk(record)):
        assert event.startswith(b"data: ") and event.endswith(b"\n\n")
        ChatCompletionChunk.model_validate_json(event[6:])
    text = Completion.model_validate_json(Reply("cmpl-1", "m", "text").body(record))
    assert text.choices[0].text == "hi" and text.usage.completion_tokens == 2


def test_http_source_bridges_two_threads():
    ctx = zmq.Context()
    source = HttpSource(ctx)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    source.loop = loop
    finished = []
    source.on_finished = finished.append
    poller = zmq.Poller()
    poller.register(source.wake_socket, zmq.POLLIN)
    try:
        assert not poller.poll(0)
        req = WorkloadRequest(id="a", messages=[{"role": "user", "content": "x"}], max_tokens=2)
        handle = asyncio.run_coroutine_threadsafe(_make_handle(req), loop).result()
        loop.call_soon_threadsafe(source.submit, handle)
        assert poller.poll(2000)  # the frontend's poll wakes at once
        assert source.due(time.time(), 0) == [(req, handle.arrival)] and not poller.poll(0)
        record = RequestRecord(id="a", arrival=handle.arrival)
        source.on_update(record, [7], False)
        source.on_update(record, [8], True)
        updates = asyncio.run_coroutine_threadsafe(_drain(handle.queue, 2), loop).result(5)
        assert updates == [([7], None), ([8], record)] and finished == [handle] and req.messages == []
        loop.call_soon_threadsafe(source.cancel, "b", DISCONNECTED)
        assert poller.poll(2000) and source.cancelled(time.time()) == [("b", DISCONNECTED)]
        assert not source.done
        source.drain(0.0, "drained")
        assert source.done and source.cancelled(time.time() + 1) == []  # nothing left in flight
    finally:
        loop.call_soon_threadsafe(source.close_sender)
        time.sleep(0.1)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        source.close()
        ctx.term()


async def _make_handle(req) -> RequestHandle:
    return RequestHandle(req, time.time())


async def _drain(queue: asyncio.Queue, n: int) -> list:
    return [await asyncio.wait_for(queue.get(), 5) for _ in range(n)]


def test_metrics_render_for_prometheus():
    live = {"pending": 2, "in_flight": 1, "ready": True, "lost": {1}, "ranks": {}}
    live["ranks"] = {0: {"encoder_busy_s": 1.0, "encoder_batches": 3.0, "encoder_decoding": 1.0, "encoder_ready": 2.0}}
    live["ranks"][2] = {"kv_free_blocks": 30.0, "kv_total_blocks": 40.0, "num_waiting": 1.0, "num_running": 2.0}
    metrics = ServerMetrics(lambda: live)
    record = RequestRecord(id="r", arrival=0.0, token_times=[0.1, 0.2, 0.3], output_token_ids=[1, 2, 3])
    record.timestamps = {"tokenized": 0.01, "first_token": 0.1}
    record.items = [{"cache": "device"}, {"cache": "miss"}]
    record.ttft_ms, record.tpot_ms, record.e2e_ms = 100.0, 100.0, 300.0
    metrics.observe(record)
    metrics.count("length")
    samples = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert samples[("epd_requests_total", (("outcome", "length"),))] == 1
    assert samples[("epd_time_to_first_token_seconds_sum", ())] == pytest.approx(0.1)
    assert samples[("epd_stage_seconds_count", (("stage", "prefill"),))] == 1
    assert samples[("epd_encoder_cache_hits_total", ())] == 1 and samples[("epd_encoder_cache_lookups_total", ())] == 2
    assert samples[("epd_kv_cache_usage_ratio", (("rank", "2"),))] == pytest.approx(0.25)
    assert samples[("epd_encoder_queue_items", (("rank", "0"),))] == 3
    assert samples[("epd_rank_lost", (("rank", "0"),))] == 0 and samples[("epd_requests_pending", ())] == 2
