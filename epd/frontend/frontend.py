"""The frontend: turns workload requests into engine work and collects what comes back.

It tokenizes (chat template, one placeholder per media item), sizes and hashes each item
(``MediaProbe``), assigns it an encoder through the policy, sends the prompt to a language instance,
timestamps every token as it arrives, learns from the encoders' ``ItemDone`` reports when each item
left its encoder (which drains the policy's load) and, when the last request ends, stops the ranks
and writes the results. Text-only requests go to the language instance alone: no encoder sees them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from epd.config import RunConfig, to_dict
from epd.frontend.chat import to_template_messages
from epd.frontend.probe import MediaProbe
from epd.frontend.report import format_encoder_table, item_stats
from epd.metrics import RequestRecord, build_logger, format_table
from epd.metrics.memory import read_peak_memory
from epd.metrics.phases import summarize_run
from epd.metrics.progress import ProgressBar
from epd.models import detect_family, resolve_checkpoint
from epd.protocol import (
    FRONTEND,
    Abort,
    Channel,
    EncodeItem,
    ItemRef,
    NewRequest,
    RequestOutput,
    SamplingParams,
    Shutdown,
    rank_name,
)
from epd.protocol.messages import ItemDone
from epd.scheduler import MediaItemInfo, build_encoder_policy
from epd.workload import ArrivalDriver, WorkloadRequest, build_workload

log = logging.getLogger("epd.frontend")

REPORT_GRACE_S = 5.0
"""After the last request ends, how long the frontend waits for the encoders' last item reports."""


@dataclass
class Tracked:
    """A request in flight, as the frontend sees it."""

    req: WorkloadRequest
    record: RequestRecord
    language_rank: int = -1
    items: list[MediaItemInfo] = field(default_factory=list)
    encoders: list[int] = field(default_factory=list)


class Frontend:
    def __init__(self, cfg: RunConfig, store) -> None:
        from transformers import AutoProcessor

        self.cfg = cfg
        self.store = store
        ckpt = resolve_checkpoint(cfg.model)
        self.processor = AutoProcessor.from_pretrained(ckpt)
        self.tokenizer = self.processor.tokenizer
        self.model_modalities = detect_family(ckpt).modalities
        encoders = cfg.topology.encoder_modalities(self.model_modalities)
        self.served = {m for mods in encoders.values() for m in mods}
        self.policy = build_encoder_policy(cfg.scheduler, encoders)
        self.probe = MediaProbe(
            cfg.scheduler,
            cfg.media,
            hash_content=self.policy.needs_content_hash or cfg.encoder.cache_enabled,
            image_processor=getattr(self.processor, "image_processor", None),
        )
        # items sent to an encoder whose ItemDone has not come back yet
        self.unreported: dict[tuple[str, int], tuple[Tracked, MediaItemInfo, int]] = {}
        self.language_load = {rank: 0 for rank in cfg.topology.language_ranks}
        self.channel = Channel(FRONTEND, store)
        self.inflight: dict[str, Tracked] = {}
        self.records: list[RequestRecord] = []
        self.progress = ProgressBar(0, enabled=False)  # the measured phase's bar is made in run()

    def run(self) -> dict:
        """Warm up, send the measured workload on its arrival schedule, stop the ranks, write results."""
        run_dir = Path(self.cfg.run_dir)
        requests = build_workload(self.cfg.workload, run_dir / "media", tokenizer=self.tokenizer)
        self.store.wait([f"epd/ready/{r}" for r in range(self.cfg.topology.world_size)])
        try:
            self._play([r for r in requests if r.warmup])
            measured = [r for r in requests if not r.warmup]
            self.progress = ProgressBar(len(measured), enabled=not self.cfg.logger.quiet)
            start = time.time()
            driver = self._play(measured)
            duration = time.time() - start
            self._await_item_reports(REPORT_GRACE_S)
        finally:
            self.progress.close()
            for rank in range(self.cfg.topology.world_size):
                self.channel.send(rank_name(rank), Shutdown())
            self.channel.close()
        records = [rec for rec in self.records if not rec.warmup]  # what the results list
        wl = self.cfg.workload
        summary = summarize_run(
            self.records,  # warm-up ones too: the summary leaves them out of every figure but num_warmup
            max(duration, 1e-9),
            phase_starts=driver.phase_starts,
            phase_rates=wl.phase_rates,
            slo_ttft_ms=wl.slo_ttft_ms,
            slo_tpot_ms=wl.slo_tpot_ms,
        )
        summary["peak_memory"] = read_peak_memory(self.store, self.cfg.topology.world_size)  # ranks report at shutdown
        with build_logger(self.cfg.logger, run_dir) as logger:
            logger.log_run(to_dict(self.cfg), summary, records)
        if not self.cfg.logger.quiet:
            print(format_table(summary), flush=True)
        if summary.get("encoders") and not self.cfg.logger.quiet:
            print(format_encoder_table(summary), flush=True)
        return summary

    def _play(self, requests: list[WorkloadRequest]) -> ArrivalDriver:
        """Submit ``requests`` on their schedule from now (arrival offsets, phases, the concurrency cap:
        ``ArrivalDriver``); return when all have ended."""
        driver = ArrivalDriver(requests, start=time.time(), concurrency=self.cfg.workload.concurrency)
        seen = len(self.records)
        goal = seen + len(requests)
        while len(self.records) < goal:
            for req, arrival in driver.due(time.time(), len(self.inflight)):
                self.submit(req, arrival=arrival)
            wait_ms = min(driver.wait_s(time.time()) * 1000, 50)
            for msg in self.channel.recv(max(0, int(wait_ms))):
                self.on_output(msg)
            for rec in self.records[seen:]:
                if not rec.warmup:
                    self.progress.update(rec)
            seen = len(self.records)
        return driver

    def _await_item_reports(self, timeout_s: float) -> None:
        """Encoders report items on their own socket: collect the last reports (their stats) before stopping."""
        deadline = time.time() + timeout_s
        while self.unreported and time.time() < deadline:
            for msg in self.channel.recv(20):
                self.on_output(msg)
        if self.unreported:
            log.warning("%d media item(s) were never reported by their encoder", len(self.unreported))

    def submit(self, req: WorkloadRequest, arrival: float) -> None:
        record = RequestRecord(id=req.id, arrival=arrival, warmup=req.warmup, phase=req.phase)
        tracked = Tracked(req=req, record=record)
        try:
            prompt_ids, media = self.tokenize(req)
        except Exception as exc:  # a template or tokenizer failure fails this request, not the run
            record.error = f"bad request: {exc}"
            self.records.append(record)
            return
        record.timestamps["tokenized"] = time.time()
        tracked.items = [self.probe.item(req.id, i, m) for i, m in enumerate(media)]
        tracked.encoders = self.policy.assign(tracked.items) if tracked.items else []
        record.items = [
            {"modality": it.modality, "encoder": enc, "est_tokens": it.est_tokens}
            for it, enc in zip(tracked.items, tracked.encoders, strict=True)
        ]
        tracked.language_rank = min(self.language_load, key=self.language_load.get)
        self.language_load[tracked.language_rank] += 1
        self.inflight[req.id] = tracked
        sampling = SamplingParams(
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            top_k=req.top_k,
            top_p=req.top_p,
            ignore_eos=req.ignore_eos,
            seed=req.seed,
            stop=req.stop,
        )
        refs = [
            ItemRef(index=it.index, modality=it.modality, encoder_rank=enc)
            for it, enc in zip(tracked.items, tracked.encoders, strict=True)
        ]
        self.channel.send(
            rank_name(tracked.language_rank),
            NewRequest(request_id=req.id, prompt_token_ids=prompt_ids, items=refs, sampling=sampling),
        )
        for item, enc in zip(tracked.items, tracked.encoders, strict=True):
            self.unreported[item.key] = (tracked, item, enc)
            self.channel.send(
                rank_name(enc),
                EncodeItem(
                    request_id=req.id,
                    index=item.index,
                    modality=item.modality,
                    source=item.source,
                    language_rank=tracked.language_rank,
                    content_hash=item.content_hash,
                    est_tokens=item.est_tokens,
                ),
            )

    def tokenize(self, req: WorkloadRequest) -> tuple[list[int], list]:
        """Chat template + tokenizer; one placeholder token per media item (the language side expands it)."""
        messages, media = to_template_messages(req.messages)
        self._check_served(media)
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"], media

    def _check_served(self, media: list) -> None:
        for m in media:
            if m.modality not in self.model_modalities:
                raise ValueError(
                    f"{m.modality} input is not supported by this model (it takes {', '.join(self.model_modalities)})"
                )
            if m.modality not in self.served:
                raise ValueError(
                    f"no encoder of topology {self.cfg.topology.name!r} takes {m.modality}; give one "
                    f"encoder instance `modalities: [{m.modality}, ...]` or drop the list"
                )

    def on_item_done(self, msg: ItemDone) -> None:
        """An encoder is done with an item: drain its load, record how it was served."""
        entry = self.unreported.pop((msg.request_id, msg.index), None)
        if entry is None:
            return
        tracked, item, enc = entry
        self.policy.on_item_done(enc, item)
        tracked.record.items[item.index].update(item_stats(msg))

    def on_output(self, msg: RequestOutput | ItemDone) -> None:
        if isinstance(msg, ItemDone):
            self.on_item_done(msg)
            return
        if not isinstance(msg, RequestOutput):
            raise RuntimeError(f"frontend got an unexpected {type(msg).__name__}")
        tracked = self.inflight.get(msg.request_id)
        if tracked is None:
            return
        now = time.time()
        rec = tracked.record
        rec.timestamps.update(msg.timestamps)
        rec.output_token_ids.extend(msg.token_ids)
        rec.token_times.extend([now] * len(msg.token_ids))
        if msg.num_prompt_tokens:
            rec.num_prompt_tokens = msg.num_prompt_tokens
        stopped = self._stop_string(tracked) if not msg.finished else None
        if stopped is not None:  # the language rank keeps going until told: tell it, finish here
            self.channel.send(rank_name(tracked.language_rank), Abort(request_id=msg.request_id))
        elif not msg.finished:
            return
        rec.error = msg.error
        rec.finish_reason = "stop" if stopped is not None else msg.finish_reason
        rec.num_cached_tokens, rec.num_preemptions = msg.num_cached_tokens, msg.num_preemptions
        rec.timestamps["frontend_finished"] = now
        rec.output_text = stopped if stopped is not None else self._detokenize(rec.output_token_ids)
        for item, enc in zip(tracked.items, tracked.encoders, strict=True):
            self.policy.on_item_done(enc, item)
        self.language_load[tracked.language_rank] -= 1
        del self.inflight[msg.request_id]
        self.records.append(rec)

    def _stop_string(self, tracked: Tracked) -> str | None:
        """The output text before the first stop string, once one has appeared (else None)."""
        if not tracked.req.stop:
            return None
        text = self._detokenize(tracked.record.output_token_ids)
        hits = [text.find(stop) for stop in tracked.req.stop if stop in text]
        return text[: min(hits)] if hits else None

    def _detokenize(self, ids: list[int]) -> str:
        vocab = len(self.tokenizer)
        return self.tokenizer.decode([i for i in ids if i < vocab], skip_special_tokens=True)
