"""``python -m epd.bench.serve endpoint.url=http://HOST:PORT/v1 [workload=...] [key=value ...]``: one
benchmark for any OpenAI-compatible endpoint — epd (``python -m epd.serve``), vLLM, SGLang.

It builds the workload exactly as ``epd.run`` does (the same generators, seeds, media files and, with
the same ``model``, the same prompt lengths), plays it with the same arrival processes (Poisson,
gamma, concurrency, trace; warm-up first, then the phases), sends each request streamed through the
official ``openai`` SDK's async client and times it from the client's side. It writes what
``epd.run`` writes: records.jsonl as requests end, results.json (TTFT, TPOT, ITL, E2E, throughput,
goodput under the SLOs), the console table, the progress bar, W&B with ``logger=wandb``; ``python -m
epd.report`` reads it. Set ``model`` (``model.path=<checkpoint>``) to the served model's checkpoint
so text lengths are counted with its tokenizer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from epd.bench.serve_client import EndpointConfig, MediaRewriter, MediaServer, send
from epd.config.schema import field_defaults
from epd.metrics import LoggerConfig, RequestRecord, build_logger, format_table, summarize_run
from epd.metrics.progress import ProgressBar
from epd.metrics.writer import RecordWriter
from epd.models.config import ModelConfig
from epd.run import CONF_DIR
from epd.workload import ArrivalDriver, WorkloadConfig, WorkloadRequest

log = logging.getLogger("epd.bench")
ConfigStore.instance().store(group="schema", name="endpoint", node=field_defaults(EndpointConfig))


@dataclass(kw_only=True)
class BenchServeConfig:
    """What ``epd.bench.serve`` reads (``epd/conf/bench_serve.yaml``)."""

    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    model: ModelConfig
    """The checkpoint whose tokenizer sizes the prompts (its weights are never loaded)."""
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    run_dir: str = "."


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="bench_serve")
def main(dcfg: DictConfig) -> None:
    from epd.config import from_dict

    for name in ("httpx", "httpx2", "openai"):  # a line per request otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    raw = OmegaConf.to_container(dcfg, resolve=True)
    raw["run_dir"] = HydraConfig.get().runtime.output_dir
    try:
        cfg = from_dict(BenchServeConfig, {k: v for k, v in raw.items() if k != "hydra"})
        requests = build_requests(cfg)
    except ValueError as exc:
        print(f"epd: error: {exc}", file=sys.stderr)
        sys.exit(2)
    key = cfg.endpoint.api_key or os.environ.get(cfg.endpoint.api_key_env) or "EMPTY"  # read here only
    sys.exit(run_bench(cfg, requests, key))


def build_requests(cfg: BenchServeConfig) -> list[WorkloadRequest]:
    """The workload of ``cfg`` as ``epd.run`` builds it, saved as ``workload.jsonl``."""
    from transformers import AutoTokenizer

    from epd.models import resolve_checkpoint
    from epd.workload import build_workload, save_requests

    run_dir = Path(cfg.run_dir)
    tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint(cfg.model))
    requests = build_workload(cfg.workload, run_dir / "media", tokenizer=tokenizer)
    save_requests(run_dir / "workload.jsonl", requests)
    return requests


def run_bench(cfg: BenchServeConfig, requests: list[WorkloadRequest], api_key: str) -> int:
    """Play ``requests`` against the endpoint and write the results; the exit code (3: some failed)."""
    run_dir = Path(cfg.run_dir)
    writer = RecordWriter(run_dir)
    try:
        records, start, end, phase_starts = asyncio.run(_play_all(cfg, requests, api_key, writer))
    finally:
        writer.close()
    wl = cfg.workload
    phases_done = len(phase_starts) == len(wl.phase_rates)
    summary = summarize_run(
        records,
        max(end - start, 1e-9),
        phase_starts=phase_starts if phases_done else (),
        phase_rates=wl.phase_rates if phases_done else (),
        slo_ttft_ms=wl.slo_ttft_ms,
        slo_tpot_ms=wl.slo_tpot_ms,
    )
    summary.update(status="complete", cut_short_reason=None, endpoint=cfg.endpoint.url)
    with build_logger(cfg.logger, run_dir) as logger:
        logger.log_run(_public_config(cfg), summary, [r for r in records if not r.warmup])
    _label_results(run_dir / "results.json", cfg.endpoint.label or cfg.endpoint.url)
    if not cfg.logger.quiet:
        print(format_table(summary), flush=True)
    failed = sum(1 for r in records if r.error is not None)
    print(f"epd: {len(records) - failed} ok, {failed} failed; results in {run_dir.absolute() / 'results.json'}")
    return 3 if failed else 0


async def _play_all(cfg: BenchServeConfig, requests, api_key: str, writer: RecordWriter):
    import openai

    ep = cfg.endpoint
    client = openai.AsyncOpenAI(base_url=ep.url, api_key=api_key, timeout=ep.timeout_s, max_retries=0)
    media_server = MediaServer(ep.media_host) if ep.media == "http" else None
    try:
        model = ep.model or await _first_model(client, ep.url)
        rewrite = MediaRewriter(ep.media, media_server)
        bodies = {id(r): rewrite.messages(r.messages) for r in requests if r.error is None}
        records: dict[int, RequestRecord] = {}

        async def one(req: WorkloadRequest, arrival: float) -> None:
            error = req.error  # refused when the workload was read: never sent
            if error is None:
                try:
                    record = await send(client, ep, model, req, bodies[id(req)], arrival)
                except Exception as exc:  # noqa: BLE001 - a client-side failure fails this request alone
                    error = f"the client failed: {type(exc).__name__}: {exc}"
            if error is not None:
                record = RequestRecord(id=req.id, arrival=arrival, warmup=req.warmup, phase=req.phase, error=error)
                record.finish_reason = "error"
            records[id(req)] = record
            writer.write(record)
            if not req.warmup:
                progress.update(record)

        progress = ProgressBar(0, enabled=False)
        await _play([r for r in requests if r.warmup], 0, one)
        measured = [r for r in requests if not r.warmup]
        progress = ProgressBar(len(measured), enabled=not cfg.logger.quiet)
        start = time.time()
        phase_starts = await _play(measured, cfg.workload.concurrency, one)
        end = time.time()
        progress.close()
    finally:
        await client.close()
        if media_server is not None:
            media_server.close()
    return [records[id(r)] for r in requests], start, end, phase_starts


async def _first_model(client, url: str) -> str:
    """The first model the endpoint lists (``endpoint.model`` unset)."""
    import openai

    try:
        models = (await client.models.list()).data
    except openai.APIError as exc:
        raise SystemExit(
            f"epd: error: GET {url}/models failed ({exc}): is the server up? or set endpoint.model"
        ) from None
    if not models:
        raise SystemExit(f"epd: error: {url}/models lists no model: set endpoint.model")
    return models[0].id


async def _play(requests: list[WorkloadRequest], concurrency: int, one) -> list[float]:
    """Send ``requests`` on their arrival schedule (``ArrivalDriver``, as ``epd.run``'s frontend does)."""
    driver = ArrivalDriver(requests, start=time.time(), concurrency=concurrency)
    in_flight: set[asyncio.Task] = set()
    ended = asyncio.Event()

    def done(task: asyncio.Task) -> None:
        in_flight.discard(task)
        ended.set()

    while not (driver.done and not in_flight):
        for req, arrival in driver.due(time.time(), len(in_flight)):
            task = asyncio.create_task(one(req, arrival))
            in_flight.add(task)
            task.add_done_callback(done)
        ended.clear()
        wait_s = driver.wait_s(time.time())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ended.wait(), timeout=None if wait_s == float("inf") else wait_s)
    return driver.phase_starts


def _public_config(cfg: BenchServeConfig) -> dict:
    """The config for results.json, without the endpoint's key."""
    from epd.config import to_dict

    return to_dict(dataclasses.replace(cfg, endpoint=dataclasses.replace(cfg.endpoint, api_key=None)))


def _label_results(path: Path, label: str) -> None:
    """Name the run in results.json (``epd.report`` shows runs by their ``label``)."""
    import json

    from epd.metrics.loggers.jsonl import atomic_write_text

    if path.is_file():
        text = path.read_text()
        assert text.startswith("{\n")
        atomic_write_text(path, "{\n  " + f'"label": {json.dumps(label)},\n' + text[2:])


if __name__ == "__main__":
    main()
