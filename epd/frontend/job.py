"""One job as the frontend runs it: wait for the ranks, play the workload, and write the results
however the job ends.

``finish_run`` is the one place results.json is written: every request of the workload appears in
it exactly once, in workload order — finished ones as they ended, those in flight or never sent
with ``error: "aborted: <why>"`` — and the summary says whether the run was cut short and why.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

from epd.config import to_dict
from epd.frontend.frontend import Frontend, JobStopped
from epd.frontend.report import format_encoder_table
from epd.frontend.source import WorkloadSource
from epd.frontend.watch import JobWatch
from epd.launch import exit_codes
from epd.launch.liveness import HeartbeatThread
from epd.metrics import RequestRecord, build_logger, format_table
from epd.metrics.memory import read_peak_memory
from epd.metrics.phases import summarize_run
from epd.metrics.progress import ProgressBar
from epd.metrics.records import stamp_latencies
from epd.protocol import Shutdown, rank_name
from epd.protocol.auth import Rejected, unseal_value
from epd.workload import WorkloadRequest, load_requests

log = logging.getLogger("epd.frontend")

REPORT_GRACE_S = 5.0
"""After the last request ends, how long the frontend waits for the encoders' last item reports."""
WORKLOAD_FILE = "workload.jsonl"
"""The run's requests (inputs), written by the launcher before any rank starts."""


def run_job(fe: Frontend, launcher_pid: int | None = None) -> int:
    """Play the run's workload through ``fe``; returns the job's exit code (``epd.launch.exit_codes``)."""
    cfg = fe.cfg
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda s, _frame: fe.signals.append(s))
    requests = load_requests(Path(cfg.run_dir) / WORKLOAD_FILE)
    watch = JobWatch(fe)
    beat = None
    reason, code, start, phase_starts = None, exit_codes.OK, time.time(), []
    try:
        beat = connect_ranks(fe, launcher_pid)
        fe.play(WorkloadSource([r for r in requests if r.warmup], time.time()), watch)
        measured = [r for r in requests if not r.warmup]
        fe.progress = ProgressBar(len(measured), enabled=not cfg.logger.quiet)
        start = time.time()
        source = WorkloadSource(measured, start, cfg.workload.concurrency)
        phase_starts = source.driver.phase_starts  # filled as phases start
        fe.play(source, watch)
        await_item_reports(fe, watch, REPORT_GRACE_S)
    except JobStopped as stop:
        reason, code = stop.reason, stop.code
    finally:
        fe.progress.close()
    return finish_run(fe, requests, reason, code, start, phase_starts, beat)


def connect_ranks(fe: Frontend, launcher_pid: int | None) -> HeartbeatThread:
    """Wait until every rank is up (warmed up), read their addresses once and start beating to them;
    ``JobStopped`` when a rank ended first or on a signal."""
    world = fe.cfg.topology.world_size
    _await_ranks(fe)
    try:
        fe.channel.resolve([rank_name(r) for r in range(world)])  # once, at start-up
    except Rejected as exc:
        raise JobStopped(f"the job's store holds an address that is not this job's: {exc.detail}", 1) from None
    addresses = [fe.channel.peer_address(rank_name(r)) for r in range(world)]
    beat = HeartbeatThread(fe.channel, addresses, fe.cfg.launch.heartbeat_interval_s, launcher_pid)
    beat.start()
    return beat


def _await_ranks(fe: Frontend) -> None:
    """Until every rank is ready; ``JobStopped`` when one ended first (the launcher says so) or on a signal."""
    from epd.launch.spawn import EXITED_KEY

    world = fe.cfg.topology.world_size
    ready = [f"epd/ready/{r}" for r in range(world)]
    while not fe.store.check(ready):
        if fe.signals:
            raise JobStopped(
                f"interrupted by {signal.Signals(fe.signals[0]).name} before the ranks were up",
                exit_codes.for_signal(fe.signals[0]),
            )
        for rank in range(world):
            key = EXITED_KEY.format(rank=rank)
            if fe.store.check([key]):
                try:
                    why = unseal_value(fe.channel.secret, key, fe.store.get(key).decode())
                except Rejected:
                    continue
                raise JobStopped(f"{why} while starting", exit_codes.JOB_FAILED)
        time.sleep(0.1)
    for rank in fe.cfg.topology.language_ranks:  # the KV capacity each language rank found room for
        tokens = int(fe.store.get(f"epd/kv_tokens/{rank}"))
        kv = tokens if fe.limits.kv_tokens is None else min(fe.limits.kv_tokens, tokens)
        fe.limits = type(fe.limits)(max_context=fe.limits.max_context, kv_tokens=kv)


def await_item_reports(fe: Frontend, watch: JobWatch, timeout_s: float) -> None:
    """Encoders report items on their own socket: collect the last reports (their stats) before stopping."""
    deadline = time.time() + timeout_s
    while fe.unreported and time.time() < deadline:
        for sender, msg in fe.channel.recv(20):
            watch.heard(sender)
            fe.on_message(sender, msg, watch)
    if fe.unreported:
        log.warning("%d media item(s) were never reported by their encoder", len(fe.unreported))


def finish_run(
    fe: Frontend,
    requests: list[WorkloadRequest],
    reason: str | None,
    code: int,
    start: float,
    phase_starts: list[float],
    beat: HeartbeatThread | None,
) -> int:
    """Record every request once, stop the ranks, write results.json; returns the exit code."""
    cfg = fe.cfg
    end = time.time()
    for tracked in list(fe.inflight.values()):
        fe.abort(tracked, f"aborted: {reason or 'the run ended first'}")
    for req in requests:
        if id(req) not in fe.record_of:
            record = RequestRecord(id=req.id, arrival=end, warmup=req.warmup, phase=req.phase, finish_reason="abort")
            record.error = f"aborted: {reason or 'the run ended first'} (never sent)"
            stamp_latencies(record)
            fe.record_of[id(req)] = record
            fe.writer.write(record)
    for rank in range(cfg.topology.world_size):
        if rank not in fe.lost:
            fe.channel.send(rank_name(rank), Shutdown(reason=reason or "done"))
    if beat is not None:
        beat.stop()
    live = [r for r in range(cfg.topology.world_size) if r not in fe.lost]
    peak = read_peak_memory(fe.store, live, timeout_s=30.0 if reason is None else 0.5)
    fe.writer.close()
    fe.channel.close(linger_ms=2000 if reason is None else 300)
    ordered = [fe.record_of[id(req)] for req in requests if id(req) in fe.record_of]
    ordered += [r for key, r in fe.record_of.items() if key not in {id(q) for q in requests}]
    summary = _summary(fe, ordered, reason, start, end, phase_starts)
    summary["peak_memory"] = peak
    with build_logger(cfg.logger, Path(cfg.run_dir)) as logger:
        logger.log_run(to_dict(cfg), summary, [r for r in ordered if not r.warmup])
    if not cfg.logger.quiet:
        print(format_table(summary), flush=True)
        if summary.get("encoders"):
            print(format_encoder_table(summary), flush=True)
    failed = sum(1 for r in ordered if r.error is not None)
    if reason is None:
        code = exit_codes.REQUESTS_FAILED if failed else exit_codes.OK
    verdict = f"cut short ({reason})" if reason else f"{len(ordered) - failed} ok, {failed} failed"
    print(f"epd: {verdict}; results in {Path(cfg.run_dir).absolute() / 'results.json'}", flush=True)
    return code


def _summary(fe: Frontend, records, reason, start, end, phase_starts) -> dict:
    wl = fe.cfg.workload
    phases_done = len(phase_starts) == len(wl.phase_rates)
    summary = summarize_run(
        records,  # warm-up ones too: the summary leaves them out of every figure but num_warmup
        max(end - start, 1e-9),
        phase_starts=phase_starts if phases_done else (),
        phase_rates=wl.phase_rates if phases_done else (),
        slo_ttft_ms=wl.slo_ttft_ms,
        slo_tpot_ms=wl.slo_tpot_ms,
    )
    summary["status"] = "cut_short" if reason else "complete"
    summary["cut_short_reason"] = reason
    summary["events"] = fe.events
    summary["dropped_messages"] = dict(fe.channel.dropped)
    return summary


def write_aborted_run(cfg, reason: str) -> None:
    """results.json for a job whose frontend never got going: every request aborted with ``reason``."""
    from epd.metrics.writer import RecordWriter

    path = Path(cfg.run_dir) / WORKLOAD_FILE
    requests = load_requests(path) if path.exists() else []
    now = time.time()
    records = []
    writer = RecordWriter(Path(cfg.run_dir))
    for req in requests:
        record = RequestRecord(id=req.id, arrival=now, warmup=req.warmup, phase=req.phase, finish_reason="abort")
        record.error = f"aborted: {reason} (never sent)"
        records.append(record)
        writer.write(record)
    writer.close()
    summary = summarize_run(records, 1e-9) if records else {}
    summary.update(status="cut_short", cut_short_reason=reason, events=[], dropped_messages={})
    with build_logger(cfg.logger, Path(cfg.run_dir)) as logger:
        logger.log_run(to_dict(cfg), summary, [r for r in records if not r.warmup])
    print(f"epd: cut short ({reason}); results in {Path(cfg.run_dir).absolute() / 'results.json'}", flush=True)
