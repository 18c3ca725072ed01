"""The frontend: turns workload requests into engine work and collects what comes back.

It tokenizes (chat template, one placeholder per media item), assigns each item an encoder through
the policy, sends the prompt to a language instance, timestamps every token as it arrives and, when
the last request ends, stops the ranks and writes the results.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from epd.config import RunConfig, to_dict
from epd.frontend.chat import to_template_messages
from epd.metrics import RequestRecord, build_logger, format_table, summarize
from epd.models import detect_family, resolve_checkpoint
from epd.protocol import (
    FRONTEND,
    Channel,
    EncodeItem,
    ItemRef,
    NewRequest,
    RequestOutput,
    SamplingParams,
    Shutdown,
    rank_name,
)
from epd.scheduler import MediaItemInfo, build_encoder_policy
from epd.workload import WorkloadRequest, build_workload

log = logging.getLogger("epd.frontend")


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
        self.language_load = {rank: 0 for rank in cfg.topology.language_ranks}
        self.channel = Channel(FRONTEND, store)
        self.inflight: dict[str, Tracked] = {}
        self.records: list[RequestRecord] = []

    def run(self) -> dict:
        """Warm up, send the measured workload on its arrival schedule, stop the ranks, write results."""
        run_dir = Path(self.cfg.run_dir)
        requests = build_workload(self.cfg.workload, run_dir / "media", tokenizer=self.tokenizer)
        self.store.wait([f"epd/ready/{r}" for r in range(self.cfg.topology.world_size)])
        try:
            self._play([r for r in requests if r.warmup])
            measured = [r for r in requests if not r.warmup]
            start = time.time()
            self._play(measured)
            duration = time.time() - start
        finally:
            for rank in range(self.cfg.topology.world_size):
                self.channel.send(rank_name(rank), Shutdown())
            self.channel.close()
        records = [rec for rec in self.records if not rec.warmup]
        summary = summarize(records, max(duration, 1e-9))
        with build_logger(self.cfg.logger, run_dir) as logger:
            logger.log_run(to_dict(self.cfg), summary, records)
        print(format_table(summary), flush=True)
        return summary

    def _play(self, requests: list[WorkloadRequest]) -> None:
        """Submit ``requests`` at their arrival offsets from now; return when all have ended."""
        start = time.time()
        queue = sorted(requests, key=lambda r: r.arrival_s)
        goal = len(self.records) + len(queue)
        while len(self.records) < goal:
            while queue and start + queue[0].arrival_s <= time.time():
                req = queue.pop(0)
                self.submit(req, arrival=start + req.arrival_s)
            wait_ms = 50 if not queue else int((start + queue[0].arrival_s - time.time()) * 1000)
            for msg in self.channel.recv(max(0, min(wait_ms, 50))):
                self.on_output(msg)

    def submit(self, req: WorkloadRequest, arrival: float) -> None:
        record = RequestRecord(id=req.id, arrival=arrival, warmup=req.warmup)
        tracked = Tracked(req=req, record=record)
        try:
            prompt_ids, media = self.tokenize(req)
        except Exception as exc:  # a template or tokenizer failure fails this request, not the run
            record.error = f"bad request: {exc}"
            self.records.append(record)
            return
        record.timestamps["tokenized"] = time.time()
        tracked.items = [
            MediaItemInfo(request_id=req.id, index=i, modality=m.modality, source=m.source) for i, m in enumerate(media)
        ]
        tracked.encoders = self.policy.assign(tracked.items) if tracked.items else []
        record.items = [
            {"modality": it.modality, "encoder": enc} for it, enc in zip(tracked.items, tracked.encoders, strict=True)
        ]
        tracked.language_rank = min(self.language_load, key=self.language_load.get)
        self.language_load[tracked.language_rank] += 1
        self.inflight[req.id] = tracked
        sampling = SamplingParams(
            max_tokens=req.max_tokens, temperature=req.temperature, ignore_eos=req.ignore_eos, seed=req.seed
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
            self.channel.send(
                rank_name(enc),
                EncodeItem(
                    request_id=req.id,
                    index=item.index,
                    modality=item.modality,
                    source=item.source,
                    language_rank=tracked.language_rank,
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

    def on_output(self, msg: RequestOutput) -> None:
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
        if not msg.finished:
            return
        rec.error = msg.error
        rec.timestamps["frontend_finished"] = now
        rec.output_text = self._detokenize(rec.output_token_ids)
        for item, enc in zip(tracked.items, tracked.encoders, strict=True):
            self.policy.on_item_done(enc, item)
        self.language_load[tracked.language_rank] -= 1
        del self.inflight[msg.request_id]
        self.records.append(rec)

    def _detokenize(self, ids: list[int]) -> str:
        vocab = len(self.tokenizer)
        return self.tokenizer.decode([i for i in ids if i < vocab], skip_special_tokens=True)
