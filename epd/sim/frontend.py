"""The frontend in simulation: arrivals, tokenization, encoder assignment, routing and records.

It follows ``epd.frontend.Frontend``: requests are released by epd's ``ArrivalDriver`` (arrival
processes, phases, the concurrency cap), tokenized one at a time (the frontend is one process: a
burst queues behind the chat template), their items assigned by epd's encoder policy
(``build_encoder_policy``; ``on_item_done`` drains its load when an encoder reports an item), the
prompt sent to the language instance with the fewest requests in flight, and every token
timestamped when it reaches the frontend, into the same ``RequestRecord``s.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from epd.frontend.report import item_stats
from epd.metrics import RequestRecord
from epd.protocol import EncodeItem, ItemRef, NewRequest, RequestOutput, SamplingParams
from epd.protocol.messages import ItemDone
from epd.scheduler import EncoderPolicy, MediaItemInfo
from epd.scheduler.decode import DecodeRequest
from epd.sim.requests import SimRequest
from epd.workload import ArrivalDriver

if TYPE_CHECKING:
    from epd.sim.simulation import Simulation

log = logging.getLogger("epd.sim")


class SimRecord(RequestRecord, kw_only=True):
    """A ``RequestRecord`` that also counts its output tokens, for runs that keep only the first and
    last token times (``sim.token_times=ends``): TPOT stays exact without a time per token."""

    num_output: int = 0

    @property
    def num_output_tokens(self) -> int:
        return self.num_output or len(self.output_token_ids) or len(self.token_times)


@dataclass(eq=False)
class Tracked:
    req: SimRequest
    record: SimRecord
    language_rank: int = -1
    items: list[MediaItemInfo] = field(default_factory=list)
    encoders: list[int] = field(default_factory=list)


class SimFrontend:
    def __init__(
        self, sim: Simulation, policy: EncoderPolicy, language_ranks: list[int], all_token_times: bool
    ) -> None:
        self.sim = sim
        self.loop = sim.loop
        self.policy = policy
        self.language_load = dict.fromkeys(language_ranks, 0)
        self.all_token_times = all_token_times
        self.inflight: dict[str, Tracked] = {}
        self.unreported: dict[tuple[str, int], tuple[Tracked, MediaItemInfo, int]] = {}
        self.records: list[SimRecord] = []
        self.free_at = 0.0  # the frontend's tokenizer is busy until then
        self.driver: ArrivalDriver | None = None
        self._requests: dict[str, SimRequest] = {}
        self._goal = 0
        self._then: Callable[[], None] | None = None
        self._log_every = 1000
        self._wall = time.perf_counter()
        self._poll_gen = 0

    # ---- arrivals ------------------------------------------------------------------------------------

    def play(self, requests: list[SimRequest], then: Callable[[], None]) -> ArrivalDriver:
        """Send ``requests`` on their schedule from now (``Frontend._play``); ``then()`` once all ended."""
        self._requests = {r.id: r for r in requests}
        self._goal = len(self.records) + len(requests)
        self._log_every = max(1000, len(requests) // 20)
        self._wall = time.perf_counter()
        self._then = then
        self.driver = ArrivalDriver([r.req for r in requests], start=self.loop.now,
                                    concurrency=self.sim.cfg.run.workload.concurrency)  # fmt: skip
        if not requests:
            then()
        else:
            self._poll()
        return self.driver

    def _poll(self, gen: int | None = None) -> None:
        if gen is not None and gen != self._poll_gen:
            return
        now = self.loop.now
        for wreq, arrival in self.driver.due(now, len(self.inflight)):
            self._submit(self._requests.pop(wreq.id), arrival)
        wait = self.driver.wait_s(now)
        if math.isfinite(wait):
            self._poll_gen += 1
            self.loop.at(now + max(wait, 0.0), self._poll, self._poll_gen)

    def _submit(self, req: SimRequest, arrival: float) -> None:
        record = SimRecord(id=req.id, arrival=arrival, warmup=req.req.warmup, phase=req.req.phase)
        tracked = Tracked(req=req, record=record)
        self.inflight[req.id] = tracked
        costs = self.sim.costs
        work = costs.tokenize_s(len(req.prompt_ids)) + sum(costs.probe_s(it.size) for it in req.items)
        start = max(self.loop.now, self.free_at)
        self.free_at = start + self.sim.host_of_frontend.run(start, work, self)
        self.loop.at(self.free_at, self._dispatch, tracked)

    def receive(self, handler: Callable, msg) -> None:
        """A message reaches the frontend and is handled at once (its ``recv_s`` is booked on the host).
        Tokens are stamped when they arrive, not after a tokenization the frontend may be in: the real
        frontend handles messages between submissions, which the simulator leaves out (it is at most one
        request's tokenize time, and it lets runs of decode steps deliver their tokens in one event)."""
        self.sim.host_of_frontend.run(self.loop.now, self.sim.costs.recv_s, self)
        handler(msg)

    def _dispatch(self, tracked: Tracked) -> None:
        """The request is tokenized: assign its items, route it, send it (``Frontend.submit``)."""
        req, record = tracked.req, tracked.record
        record.timestamps["tokenized"] = self.loop.now
        tracked.items = [
            MediaItemInfo(
                request_id=req.id,
                index=it.index,
                modality=it.modality,
                source=it.source,
                est_tokens=it.est_tokens,
                content_hash=it.content_hash,
            )  # fmt: skip
            for it in req.items
        ]
        tracked.encoders = self.policy.assign(tracked.items) if tracked.items else []
        record.items = [
            {"modality": it.modality, "encoder": enc, "est_tokens": it.est_tokens}
            for it, enc in zip(tracked.items, tracked.encoders, strict=True)
        ]
        tracked.language_rank = min(self.language_load, key=self.language_load.get)
        self.language_load[tracked.language_rank] += 1
        wreq = req.req
        sampling = SamplingParams(max_tokens=wreq.max_tokens, ignore_eos=True, seed=wreq.seed)
        refs = [
            ItemRef(index=it.index, modality=it.modality, encoder_rank=enc)
            for it, enc in zip(tracked.items, tracked.encoders, strict=True)
        ]
        decode_rank = -1
        policy = self.sim.decode_policy
        if policy is not None:  # Frontend._new_request: the decode instance is chosen when the request is routed
            self.sim.refresh_decode_load()
            num_tokens = len(req.prompt_ids) + sum(it.est_tokens for it in tracked.items)
            decode_rank = policy.assign(DecodeRequest(request_id=req.id, num_tokens=num_tokens,
                                                      max_tokens=wreq.max_tokens))  # fmt: skip
        new = NewRequest(request_id=req.id, prompt_token_ids=req.prompt_ids, items=refs, sampling=sampling,
                         decode_rank=decode_rank)  # fmt: skip
        self.sim.send_request(tracked.language_rank, new)
        for item, enc in zip(tracked.items, tracked.encoders, strict=True):
            self.unreported[item.key] = (tracked, item, enc)
            self.sim.send_item(
                enc,
                EncodeItem(
                    request_id=req.id,
                    index=item.index,
                    modality=item.modality,
                    source=item.source,
                    language_rank=tracked.language_rank,
                    content_hash=item.content_hash,
                    est_tokens=item.est_tokens,
                ),  # fmt: skip
            )

    # ---- what comes back -------------------------------------------------------------------------------

    def on_item_done(self, msg: ItemDone) -> None:
        entry = self.unreported.pop((msg.request_id, msg.index), None)
        if entry is None:
            return
        tracked, item, enc = entry
        self.policy.on_item_done(enc, item)
        if self.all_token_times:
            tracked.record.items[item.index].update(item_stats(msg))
        else:  # millions of items: keep what the encoder summary needs
            ts = msg.timestamps
            tracked.record.items[item.index].update(
                num_tokens=msg.num_tokens, cache=msg.cache, batch_id=msg.batch_id, batch_size=msg.batch_size,
                batch_tokens=msg.batch_tokens, encode_start=ts.get("encode_start"), encode_end=ts.get("encode_end"),
            )  # fmt: skip

    def on_output(self, msg: RequestOutput) -> None:
        tracked = self.inflight.get(msg.request_id)
        if tracked is None:
            return
        now = self.loop.now
        rec = tracked.record
        if msg.timestamps:
            rec.timestamps.update(msg.timestamps)
        if msg.kv_transfer_bytes:
            rec.kv_transfer_bytes = msg.kv_transfer_bytes
        self.add_token_times(rec, [now] * len(msg.token_ids))
        if msg.num_prompt_tokens:
            rec.num_prompt_tokens = msg.num_prompt_tokens
        if not msg.finished:
            return
        rec.error = msg.error
        rec.finish_reason = msg.finish_reason
        rec.num_cached_tokens, rec.num_preemptions = msg.num_cached_tokens, msg.num_preemptions
        rec.timestamps["frontend_finished"] = now
        for item, enc in zip(tracked.items, tracked.encoders, strict=True):
            self.policy.on_item_done(enc, item)
        self.language_load[tracked.language_rank] -= 1
        del self.inflight[msg.request_id]
        self.records.append(rec)
        if len(self.records) % self._log_every == 0:
            log.info("%d of %d requests done at %.1f simulated s (%.0f s of wall time)", len(self.records), self._goal,
                     self.loop.now, time.perf_counter() - self._wall)  # fmt: skip
        if len(self.records) >= self._goal:
            self._then()
        else:
            self._poll()

    def add_token_times(self, rec: SimRecord, times: list[float]) -> None:
        """Tokens reached the frontend at ``times`` (all kept, or the first and the last)."""
        if not times:
            return
        rec.num_output += len(times)
        if self.all_token_times:
            rec.token_times.extend(times)
        elif not rec.token_times:
            rec.token_times = [times[0], times[-1]] if len(times) > 1 or rec.num_output > 1 else [times[0]]
        else:
            rec.token_times = [rec.token_times[0], times[-1]]

    def unfinished(self) -> list[SimRecord]:
        """Records of requests still in flight (when the simulated clock stops early)."""
        out = []
        for tracked in self.inflight.values():
            rec = msgspec.structs.replace(
                tracked.record, error="not finished when the simulation stopped (sim.max_sim_s)"
            )
            out.append(rec)
        return out
