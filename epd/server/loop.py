"""``run_server``: the frontend process of ``python -m epd.serve`` — serve HTTP until told to stop.

Order: the HTTP server starts at once (``/health`` answers 503 while the ranks warm up), the
frontend waits for every rank, then plays the ``HttpSource`` like any request source. The first
SIGTERM or SIGINT starts the drain: no new request (503), ``/health`` 503, requests in flight get
``server.drain_timeout_s`` to finish and are then aborted. A second signal (a second or more after
the first: a Ctrl-C reaching both the launcher and the frontend counts once) or a lost language rank
stops at once. However it ends, ``finish_run`` writes results.json from every request served, the
clients still waiting get their answer, and the HTTP server closes.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from epd.frontend.frontend import Frontend, JobStopped
from epd.frontend.job import await_item_reports, connect_ranks, finish_run
from epd.frontend.watch import JobWatch
from epd.launch import exit_codes
from epd.models import resolve_checkpoint
from epd.server.app import ServerState, build_app
from epd.server.errors import DISCONNECTED, DRAINED, error_of_record
from epd.server.http import HttpThread
from epd.server.metrics import ServerMetrics
from epd.server.source import HttpSource, RequestHandle

log = logging.getLogger("epd.server")

SERVER_FILE = "server.json"
"""Written to the run directory once the server listens: its ``url`` (with ``/v1``), ``port`` and the
frontend's ``pid`` (the process to send SIGTERM to under torchrun)."""
SAME_SIGNAL_S = 1.0
"""Signals this close to the first count as the same one (a Ctrl-C reaches the launcher and the frontend)."""
ITEM_REPORT_GRACE_S = 1.0


def run_server(fe: Frontend, launcher_pid: int | None = None) -> int:
    """Serve until stopped; returns the job's exit code (``epd.launch.exit_codes``)."""
    cfg = fe.cfg
    source = HttpSource(fe.channel.ctx)
    fe.channel.wake_on(source.wake_socket)
    state = _state(fe, source)
    try:
        http = HttpThread(build_app(state), cfg.server.host, cfg.server.port, lambda loop: _attach(source, loop))
    except ValueError as exc:  # the port was taken since the entry point checked it
        log.error("%s", exc)
        print(f"epd: error: {exc}", file=sys.stderr, flush=True)
        source.close_sender()
        source.close()
        return exit_codes.BAD_CONFIG
    _install_signals(fe, source)
    http.start()
    http.started.wait()
    if http.error is not None:
        raise http.error
    _write_server_file(cfg.run_dir, http)
    watch = JobWatch(fe)
    beat, reason, code, start = None, None, exit_codes.OK, time.time()
    try:
        beat = connect_ranks(fe, launcher_pid)
        state.created, start = int(time.time()), time.time()
        source.ready = True
        if not cfg.logger.quiet:
            print(f"epd: serving {', '.join(state.model_names)} on {http.url}/v1", flush=True)
        fe.play(source, watch)
        await_item_reports(fe, watch, ITEM_REPORT_GRACE_S)
    except JobStopped as stop:
        reason, code = stop.reason, stop.code
    source.draining = True
    requests = source.served + source.unsent()
    _close_source(source, http)
    code = finish_run(fe, requests, reason, code, start, [], beat)
    source.fail_unsent(f"aborted: {reason or 'the server stopped'} (never sent)")
    http.stop()
    return exit_codes.OK if code == exit_codes.REQUESTS_FAILED else code  # failed requests are the clients'


def _state(fe: Frontend, source: HttpSource) -> ServerState:
    from transformers import AutoTokenizer

    cfg = fe.cfg
    tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint(cfg.model))  # the server thread's own
    vocab = len(tokenizer)

    def decode(ids: list[int]) -> str:  # as the frontend's _detokenize
        return tokenizer.decode([i for i in ids if i < vocab], skip_special_tokens=True)

    def live() -> dict:
        return {
            "pending": state.pending,
            "in_flight": len(fe.inflight),
            "ready": source.ready and not source.draining,
            "ranks": dict(fe.rank_stats),
            "lost": set(fe.lost),
        }

    state = ServerState(
        cfg=cfg.server,
        source=source,
        metrics=ServerMetrics(live),
        model_names=list(cfg.server.model_names) or [default_model_name(cfg.model)],
        decode=decode,
        max_context=lambda: fe.limits.max_context,
        max_message_bytes=cfg.launch.max_message_bytes,
    )

    def on_finished(handle: RequestHandle) -> None:  # in the server's thread
        state.pending -= 1
        record = handle.record
        state.metrics.observe(record)
        if record.error is None:
            state.metrics.count(record.finish_reason or "stop")
        elif record.error == DISCONNECTED:
            state.metrics.count("disconnected")
        else:
            state.metrics.count(error_of_record(record.error, record.num_output_tokens, 1).outcome)

    source.on_finished = on_finished
    return state


def default_model_name(model_cfg) -> str:
    """The name clients give as ``model`` when ``server.model_names`` is empty."""
    if model_cfg.path:
        return Path(model_cfg.path).expanduser().resolve().name
    return model_cfg.name or f"tiny-{model_cfg.tiny}"


def _attach(source: HttpSource, loop) -> None:
    source.loop = loop


def _install_signals(fe: Frontend, source: HttpSource) -> None:
    cfg = fe.cfg.server
    first: list[float] = []

    def on_signal(signum: int, frame) -> None:
        now = time.monotonic()
        if not first:
            first.append(now)
            if source.ready:
                log.warning(
                    "%s: draining (server.drain_timeout_s=%g)", signal.Signals(signum).name, cfg.drain_timeout_s
                )
                source.drain(cfg.drain_timeout_s, DRAINED.format(cfg.drain_timeout_s))
                return
        elif now - first[0] < SAME_SIGNAL_S:
            return
        fe.signals.append(signum)  # not serving yet, or asked twice: stop now

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)


def _close_source(source: HttpSource, http: HttpThread) -> None:
    """Close the source's sockets (the frontend's channel must be able to end its ZMQ context): the
    sending one in the server's thread, which owns it."""
    import concurrent.futures

    done: concurrent.futures.Future = concurrent.futures.Future()

    def close_sender() -> None:
        source.close_sender()
        done.set_result(None)

    if source.loop is not None and http.is_alive():
        source.loop.call_soon_threadsafe(close_sender)
        try:
            done.result(timeout=5)
        except concurrent.futures.TimeoutError:
            log.warning("the HTTP server's thread did not answer: closing its wake-up socket from here")
            source.close_sender()
    else:
        source.close_sender()
    source.close()


def _write_server_file(run_dir: str, http: HttpThread) -> None:
    info = {"url": f"{http.url}/v1", "host": http.host, "port": http.port, "pid": os.getpid()}
    path = Path(run_dir) / SERVER_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info) + "\n")
    tmp.replace(path)
