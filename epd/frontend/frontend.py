"""The frontend: turns requests into engine work and collects what comes back.

It takes requests from a source (``epd.frontend.source``: a workload on its arrival schedule, or the
HTTP server), checks them (``epd.frontend.validate``), tokenizes (chat template, one placeholder per
media item), sizes and hashes each item (``MediaProbe``), assigns it an encoder through the policy,
sends the prompt to a language instance, timestamps every token as it arrives and appends each
finished request's record to the run directory at once (``RecordWriter``).

It also watches the job (``epd.frontend.watch``): ranks beat, and a rank that goes silent or that the
launcher reports lost is handled — a lost encoder's items go to the other encoders; a lost language
rank ends the job. However the job ends (the last request, Ctrl-C, SIGTERM, a lost rank),
``finish_run`` writes results.json from every request: finished ones as they ended, the others
marked ``aborted: <why>``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from epd.config import RunConfig
from epd.frontend.chat import to_template_messages
from epd.frontend.probe import MediaProbe
from epd.frontend.source import RequestSource
from epd.frontend.validate import Limits, check_length, check_request
from epd.metrics import RequestRecord
from epd.metrics.progress import ProgressBar
from epd.metrics.records import stamp_latencies
from epd.metrics.writer import RecordWriter
from epd.models import detect_family, resolve_checkpoint
from epd.protocol import (
    FRONTEND,
    Abort,
    Channel,
    EncodeItem,
    ItemDone,
    ItemRef,
    NewRequest,
    RequestOutput,
    SamplingParams,
    job_roles,
    rank_name,
)
from epd.scheduler import MediaItemInfo, build_encoder_policy
from epd.scheduler.decode import DecodeRequest, build_decode_policy
from epd.workload import WorkloadRequest

log = logging.getLogger("epd.frontend")


class JobStopped(Exception):
    """The job must end now; ``reason`` goes into every unfinished request's error, ``code`` is the exit code."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass
class Tracked:
    """A request in flight, as the frontend sees it."""

    req: WorkloadRequest
    record: RequestRecord
    language_rank: int = -1
    decode_rank: int = -1
    """With a prefill/decode split: the decode instance that continues it (-1: none)."""
    items: list[MediaItemInfo] = field(default_factory=list)
    encoders: list[int] = field(default_factory=list)
    early: dict[int, tuple[list[int], float]] = field(default_factory=dict)
    """Tokens that arrived ahead of earlier ones (offset → tokens, arrival): a decode instance can be
    heard from before the prefill instance's first token."""
    final: RequestOutput | None = None
    """The output that ended the request, held until every token before it has arrived."""

    @property
    def language_ranks(self) -> set[int]:
        """The ranks that may hold this request on the language side (its prefill and decode instances)."""
        return {self.language_rank} | ({self.decode_rank} if self.decode_rank >= 0 else set())


class Frontend:
    def __init__(self, cfg: RunConfig, store, secret: bytes, bind_host: str = "127.0.0.1") -> None:
        from transformers import AutoProcessor

        self.cfg = cfg
        self.store = store
        ckpt = resolve_checkpoint(cfg.model)
        self.processor = AutoProcessor.from_pretrained(ckpt)
        self.tokenizer = self.processor.tokenizer
        self.model_modalities = detect_family(ckpt).modalities
        self.encoders = cfg.topology.encoder_modalities(self.model_modalities)
        self.policy = build_encoder_policy(cfg.scheduler, self.encoders)
        self.probe = MediaProbe(
            cfg.scheduler,
            cfg.media,
            hash_content=self.policy.needs_content_hash or cfg.encoder.cache_enabled,
            image_processor=getattr(self.processor, "image_processor", None),
        )
        self.limits = Limits(max_context=context_limit(ckpt, cfg.engine.max_model_len))
        # items sent to an encoder whose ItemDone has not come back yet
        self.unreported: dict[tuple[str, int], tuple[Tracked, MediaItemInfo, int]] = {}
        self.language_load = {rank: 0 for rank in cfg.topology.language_ranks}
        self.decode_policy = None
        if cfg.topology.disaggregated_pd:
            self.decode_policy = build_decode_policy(
                cfg.scheduler.decode_policy, cfg.topology.decode_ranks, cfg.engine.block_size
            )
        self.channel = Channel(
            FRONTEND, store, secret, job_roles(cfg.topology, cfg.launch.nnodes), bind_host, cfg.launch.max_message_bytes
        )
        self.inflight: dict[str, Tracked] = {}
        self.records: list[RequestRecord] = []  # finished, in the order they finished
        self.record_of: dict[int, RequestRecord] = {}  # id() of every request submitted → its record
        self.writer = RecordWriter(cfg.run_dir)
        self.lost: set[int] = set()  # ranks declared lost
        self.rank_stats: dict[int, dict[str, float]] = {}  # each rank's load, from its last heartbeat
        self.events: list[dict] = []  # what happened to the job (lost ranks, items re-sent)
        self.progress = ProgressBar(0, enabled=False)  # the measured phase's bar is made by the run
        self.signals: list[int] = []  # set by the process's signal handlers
        self.source: RequestSource | None = None  # the source being played: told of every request's progress

    @property
    def served(self) -> set[str]:
        return {m for mods in self.encoders.values() for m in mods}

    # ---- the loop -------------------------------------------------------------------------------

    def play(self, source: RequestSource, watch) -> None:
        """Submit ``source``'s requests as they come due and collect their outputs until the source is done
        and nothing is in flight; ``JobStopped`` when the job must end first."""
        seen = len(self.records)
        self.source = source
        while not (source.done and not self.inflight):
            watch.check()
            now = time.time()
            for req, arrival in source.due(now, len(self.inflight)):
                self.submit(req, arrival)
            for request_id, error in source.cancelled(now):
                if request_id in self.inflight:
                    self.abort(self.inflight[request_id], error)
            wait_ms = min(source.wait_s(time.time()) * 1000, 20)
            for sender, msg in self.channel.recv(max(0, int(wait_ms))):
                watch.heard(sender)
                self.on_message(sender, msg, watch)
            for rec in self.records[seen:]:
                if not rec.warmup:
                    self.progress.update(rec)
            seen = len(self.records)

    def on_message(self, sender: str, msg, watch) -> None:
        rank = _rank_of(sender)
        if rank is not None and rank in self.lost:
            self.channel._drop("from-lost-rank", f"{type(msg).__name__} from {sender}, declared lost")
            return
        if isinstance(msg, ItemDone):
            self.on_item_done(msg)
        elif isinstance(msg, RequestOutput):
            self.on_output(msg, sender)
        else:
            watch.on_message(sender, msg)

    # ---- submitting -----------------------------------------------------------------------------

    def submit(self, req: WorkloadRequest, arrival: float) -> None:
        """Check, tokenize, assign and send one request; any problem fails it alone, recorded."""
        record = RequestRecord(id=req.id, arrival=arrival, warmup=req.warmup, phase=req.phase)
        self.record_of[id(req)] = record
        tracked = Tracked(req=req, record=record)
        try:
            if req.error is not None:
                raise ValueError(req.error)
            if req.id in self.inflight:
                raise ValueError(f"id {req.id!r} is already in flight: request ids must be unique")
            check_request(req, self.limits)
            prompt_ids, media = self.tokenize(req)
            check_length(len(prompt_ids), req.max_tokens, self.limits, "the prompt (before media tokens)")
            record.timestamps["tokenized"] = time.time()
            tracked.items = [self._probe(req.id, i, m) for i, m in enumerate(media)]
            tracked.encoders = self.policy.assign(tracked.items) if tracked.items else []
            new_request = self._new_request(req, tracked, prompt_ids)
        except Exception as exc:  # anything wrong with this request fails it, never the frontend
            for item, enc in zip(tracked.items, tracked.encoders, strict=False):
                self.policy.on_item_done(enc, item)
            record.error = f"bad request: {exc}"
            record.finish_reason = "error"
            self._finish_record(record)
            return
        record.items = [
            {"modality": it.modality, "encoder": enc, "est_tokens": it.est_tokens}
            for it, enc in zip(tracked.items, tracked.encoders, strict=True)
        ]
        self.language_load[tracked.language_rank] += 1
        self.inflight[req.id] = tracked
        self.channel.send(rank_name(tracked.language_rank), new_request)
        for item, enc in zip(tracked.items, tracked.encoders, strict=True):
            self.send_item(tracked, item, enc)

    def _probe(self, request_id: str, index: int, ref) -> MediaItemInfo:
        try:
            return self.probe.item(request_id, index, ref)
        except ValueError as exc:  # MediaError: refused, missing, not a regular file, too big
            raise ValueError(f"media item {index}: {exc}") from None

    def _new_request(self, req: WorkloadRequest, tracked: Tracked, prompt_ids: list[int]) -> NewRequest:
        tracked.language_rank = min(self.language_load, key=self.language_load.get)
        if self.decode_policy is not None:
            num_tokens = len(prompt_ids) + sum(it.est_tokens for it in tracked.items)
            ask = DecodeRequest(request_id=req.id, num_tokens=num_tokens, max_tokens=req.max_tokens)
            tracked.decode_rank = self.decode_policy.assign(ask)
        sampling = SamplingParams(
            max_tokens=req.max_tokens,
            temperature=float(req.temperature),
            top_k=req.top_k,
            top_p=float(req.top_p),
            ignore_eos=req.ignore_eos,
            seed=req.seed,
            stop=req.stop,
        )
        refs = [
            ItemRef(index=it.index, modality=it.modality, encoder_rank=enc)
            for it, enc in zip(tracked.items, tracked.encoders, strict=True)
        ]
        return NewRequest(
            request_id=req.id,
            prompt_token_ids=prompt_ids,
            items=refs,
            sampling=sampling,
            decode_rank=tracked.decode_rank,
        )

    def send_item(self, tracked: Tracked, item: MediaItemInfo, enc: int) -> None:
        self.unreported[item.key] = (tracked, item, enc)
        self.channel.send(
            rank_name(enc),
            EncodeItem(
                request_id=tracked.req.id,
                index=item.index,
                modality=item.modality,
                source=item.source,
                language_rank=tracked.language_rank,
                content_hash=item.content_hash,
                est_tokens=item.est_tokens,
            ),
        )

    def tokenize(self, req: WorkloadRequest) -> tuple[list[int], list]:
        """Chat template + tokenizer; one placeholder token per media item (the language side expands it).
        A text completion's ``prompt`` is tokenized as it is (no template, no media)."""
        if req.prompt is not None:
            return self.tokenizer(req.prompt)["input_ids"], []
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
                    + (" (the encoders that did were lost)" if self.lost else "")
                )

    # ---- results coming back --------------------------------------------------------------------

    def on_item_done(self, msg: ItemDone) -> None:
        """An encoder is done with an item: drain its load, record how it was served."""
        from epd.frontend.report import item_stats

        entry = self.unreported.get((msg.request_id, msg.index))
        if entry is None or entry[2] != msg.encoder_rank:  # unknown, or an item since re-sent elsewhere
            return
        del self.unreported[(msg.request_id, msg.index)]
        tracked, item, enc = entry
        self.policy.on_item_done(enc, item)
        tracked.record.items[item.index].update(item_stats(msg))

    def on_output(self, msg: RequestOutput, sender: str = "") -> None:
        tracked = self.inflight.get(msg.request_id)
        if tracked is None:
            return
        if self.decode_policy is not None and sender == rank_name(tracked.decode_rank):
            self.decode_policy.load.admit(msg.request_id)  # it holds its blocks there now
        rec = tracked.record
        if msg.kv_transfer_bytes:
            rec.kv_transfer_bytes = msg.kv_transfer_bytes
        rec.timestamps.update(msg.timestamps)
        if msg.num_prompt_tokens:
            rec.num_prompt_tokens = msg.num_prompt_tokens
        new = self._take_tokens(tracked, msg.offset, msg.token_ids, time.time())
        if msg.finished:
            tracked.final = msg
        final = tracked.final
        if final is not None and (
            final.error is not None or len(rec.output_token_ids) >= final.offset + len(final.token_ids)
        ):
            self._finish_output(tracked, final, None, new)
            return
        stopped = self._stop_string(tracked) if new else None
        if stopped is not None:  # the language side keeps going until told: tell it, finish here
            for rank in tracked.language_ranks - self.lost:
                self.channel.send(rank_name(rank), Abort(request_id=msg.request_id))
            self._finish_output(tracked, msg, stopped, new)
        elif new:
            self.on_progress(tracked, new)

    def _take_tokens(self, tracked: Tracked, offset: int, tokens: list[int], now: float) -> list[int]:
        """Append the tokens that extend the output in order (holding any that came early); the new ones."""
        rec = tracked.record
        if tokens:
            tracked.early[offset] = (list(tokens), now)
        new: list[int] = []
        while True:
            ready = [off for off in tracked.early if off <= len(rec.output_token_ids)]
            if not ready:
                return new
            for off in sorted(ready):
                toks, at = tracked.early.pop(off)
                extra = toks[len(rec.output_token_ids) - off :] if len(rec.output_token_ids) - off < len(toks) else []
                rec.output_token_ids.extend(extra)
                rec.token_times.extend([at] * len(extra))
                new += extra

    def _finish_output(self, tracked: Tracked, msg: RequestOutput, stopped: str | None, new: list[int]) -> None:
        rec = tracked.record
        rec.error = msg.error
        rec.finish_reason = "stop" if stopped is not None else msg.finish_reason
        if msg.finished:
            rec.num_cached_tokens, rec.num_preemptions = msg.num_cached_tokens, msg.num_preemptions
        rec.output_text = stopped if stopped is not None else self._detokenize(rec.output_token_ids)
        self.end(tracked, new)

    def on_progress(self, tracked: Tracked, new_tokens: list[int]) -> None:
        """New tokens of a request in flight (the HTTP source streams them)."""
        if self.source is not None:
            self.source.on_update(tracked.record, new_tokens, False)

    def end(self, tracked: Tracked, new_tokens: list[int] | None = None) -> None:
        """``tracked`` is over (finished, failed or aborted): free its load, record it (``new_tokens``: the
        ones that came with its end, for a streaming source)."""
        for item, enc in zip(tracked.items, tracked.encoders, strict=True):
            self.policy.on_item_done(enc, item)
            if tracked.record.error is not None:  # its encoders drop what they had not done: no report comes
                self.unreported.pop(item.key, None)
        self.language_load[tracked.language_rank] -= 1
        if tracked.decode_rank >= 0:
            self.decode_policy.load.finish(tracked.decode_rank, tracked.req.id)
        self.inflight.pop(tracked.req.id, None)
        self._finish_record(tracked.record, new_tokens or [])

    def abort(self, tracked: Tracked, error: str) -> None:
        """End a request in flight with ``error``: its language rank frees its blocks, its encoders drop
        the items they have not encoded yet."""
        holders = {
            enc for item, enc in zip(tracked.items, tracked.encoders, strict=True) if item.key in self.unreported
        }
        for rank in (tracked.language_ranks | holders) - self.lost:
            self.channel.send(rank_name(rank), Abort(request_id=tracked.req.id))
        tracked.record.error = error
        tracked.record.finish_reason = "abort"
        self.end(tracked)

    def _finish_record(self, record: RequestRecord, new_tokens: list[int] | None = None) -> None:
        record.timestamps["frontend_finished"] = time.time()
        stamp_latencies(record)
        self.records.append(record)
        self.writer.write(record)
        if self.source is not None:
            self.source.on_update(record, new_tokens or [], True)

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


def _rank_of(sender: str) -> int | None:
    return int(sender[4:]) if sender.startswith("rank") and sender[4:].isdigit() else None


def context_limit(ckpt, max_model_len: int) -> int:
    """Prompt + output tokens a request may use: ``engine.max_model_len`` capped by the model's positions."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(ckpt)
    for part in ("thinker_config", "text_config"):
        config = getattr(config, part, None) or config
    config = getattr(config, "text_config", None) or config
    positions = getattr(config, "max_position_embeddings", None)
    return min(max_model_len, positions) if positions else max_model_len
