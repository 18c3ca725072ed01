"""A whole job on the simulated clock: the frontend, every instance's loop, the data plane.

``Simulation(cfg).run()`` builds the workload with ``epd.workload.build_workload`` (no media
written), plays warm-up then measured requests as ``epd.run`` does, and returns the records and the
summary that ``epd.metrics.summarize_run`` computes from them.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np

from epd import clock
from epd.encoder.cache import item_bytes
from epd.language.sequence import Sequence
from epd.models import resolve_checkpoint
from epd.protocol import EncodeItem, NewRequest, RequestOutput
from epd.protocol.messages import ItemDone
from epd.scheduler import build_encoder_policy
from epd.scheduler.decode import build_decode_policy
from epd.sim.config import SimRunConfig
from epd.sim.costs import CostModel
from epd.sim.encoder import build_encoder_role
from epd.sim.events import Device, EventLoop
from epd.sim.frontend import SimFrontend, SimRecord
from epd.sim.language import SimEngine, SimSide
from epd.sim.rank import SimRank
from epd.sim.requests import PromptSizer, SimItem, SimRequest
from epd.sim.topology import SimTopology, from_config, from_counts
from epd.workload import build_workload

log = logging.getLogger("epd.sim")
ALL_TOKEN_TIMES_UP_TO = 20000
"""``sim.token_times=auto`` keeps every token time up to this many requests."""


class Simulation:
    def __init__(self, cfg: SimRunConfig, profile: dict, processor: Any = None, load: float | None = None) -> None:
        self.cfg = cfg
        self.profile = profile
        run = cfg.run
        self.loop = EventLoop()
        self.costs = CostModel(profile, cfg.sim, run.transfer.backend, load)
        self.topology: SimTopology = (
            from_counts(cfg.sim) if cfg.sim.counts_given else from_config(run.topology, cfg.sim)
        )
        self.processor = processor
        self.horizon = cfg.sim.max_sim_s
        self.items: dict[str, SimItem] = {}
        self._build_devices()
        self.ranks = {inst.leader: self._build_rank(inst) for inst in self.topology.instances}
        modalities = tuple(profile["model"]["modalities"])
        encoders = {
            inst.leader: tuple(m for m in modalities if inst.modalities is None or m in inst.modalities)
            for inst in self.topology.encoders
        }
        self.policy = build_encoder_policy(run.scheduler, encoders)
        decode = [inst.leader for inst in self.topology.with_role("decode")]
        self.decode_policy = (
            build_decode_policy(run.scheduler.decode_policy, decode, run.engine.block_size) if decode else None
        )
        self.frontend: SimFrontend | None = None

    # ---- construction -------------------------------------------------------------------------------

    def _build_devices(self) -> None:
        """Where each rank computes (``devices``) and where its decode threads run (``hosts``)."""
        hw = self.profile["hardware"]
        self.on_cpu = hw["device"] == "cpu"
        opts = self.cfg.sim
        instances = self.topology.instances
        anticipate = opts.contention == "anticipate"
        if self.on_cpu:  # what other tenants left free when the profile was taken, unless told
            cores = float(opts.cpu_cores or hw.get("effective_cores") or hw.get("cpu_count", 1))
        else:
            cores = float(opts.host_cores or hw.get("cpu_count", 16))
        if self.on_cpu and opts.shared_host:  # every rank, decode thread and the frontend share the host's cores
            cpu = Device("cpu", cores, anticipate)
            self.devices = dict.fromkeys((inst.leader for inst in instances), cpu)
            self.hosts = dict.fromkeys((inst.leader for inst in instances), cpu)
            self.host_of_frontend = cpu
        elif self.on_cpu:  # a cluster of profiled hosts, a rank on each (its decode threads share its host)
            self.devices = {inst.leader: Device(f"cpu{inst.leader}", cores, anticipate) for inst in instances}
            self.hosts = dict(self.devices)
            self.host_of_frontend = Device("frontend", cores, anticipate)
        else:  # GPUs, and per node one host's cores for the decode threads and the frontend
            gpus: dict[int, Device] = {}
            nodes: dict[int, Device] = {}
            self.devices = {
                inst.leader: gpus.setdefault(inst.gpu, Device(f"gpu{inst.gpu}", 1.0, anticipate)) for inst in instances
            }
            self.hosts = {
                inst.leader: nodes.setdefault(inst.node, Device(f"host{inst.node}", cores, anticipate))
                for inst in instances
            }
            self.host_of_frontend = nodes.setdefault(0, Device("host0", cores, anticipate))
        sharing: dict[int, int] = {}
        for dev in self.devices.values():
            sharing[id(dev)] = sharing.get(id(dev), 0) + 1
        self._alone = {leader: sharing[id(dev)] == 1 for leader, dev in self.devices.items()}

    def _build_rank(self, inst) -> SimRank:
        run, prompt = self.cfg.run, self.profile["frontend"]["prompt"]
        rank = SimRank(self, inst)
        device = self.devices[inst.leader]
        if inst.encodes:
            rank.encoder, rank.pool = build_encoder_role(
                self.loop, self.costs, run.encoder, run.media, run.scheduler, self.items, device,
                self.hosts[inst.leader], tuple(self.profile["model"]["modalities"]), prompt, owner=rank,
            )  # fmt: skip
        if inst.role != "encoder":
            capacity = self.costs.kv_capacity_tokens(inst.tp, run.engine.kv_tokens)
            rank.engine = SimEngine(self.loop, run.engine, self.costs, device, SimSide(prompt["placeholder_ids"]),
                                    capacity, inst.tp, inst.role)  # fmt: skip
            rank.engine.owner = rank  # its steps and the rank's tower calls take turns on one loop
            if inst.role == "prefill":
                rank.engine.on_hand_off = lambda seq, r=rank: self.hand_off(r, seq)
        rank.can_fast_forward = self.cfg.sim.fast_forward and self._alone[inst.leader]
        return rank

    # ---- messages between processes ------------------------------------------------------------------

    @property
    def latency(self) -> float:
        return self.costs.control_latency_s

    def send_request(self, leader: int, req: NewRequest) -> None:
        rank = self.ranks[leader]
        rank.send(self.latency, rank.engine.add_request, req)

    def send_item(self, leader: int, msg: EncodeItem) -> None:
        rank = self.ranks[leader]
        rank.send(self.latency, rank.encoder.add, msg)

    def deliver_item(self, rank: SimRank, res) -> None:
        """``RankServer._deliver``: report to the frontend, hand the embeddings to the language instance."""
        msg, item = res.msg, res.item
        if item is not None and msg.content_hash is not None:
            item.meta.info["content_hash"] = msg.content_hash
        done = ItemDone(request_id=msg.request_id, index=msg.index, encoder_rank=rank.inst.leader,
                        num_tokens=res.num_tokens, est_tokens=res.est_tokens, cache=res.cache, batch_id=res.batch_id,
                        batch_size=res.batch_size, batch_tokens=res.batch_tokens, error=res.error,
                        timestamps=dict(res.timestamps))  # fmt: skip
        self.loop.advance(self.costs.send_s)
        self.loop.at(self.loop.now + self.latency, self.frontend.receive, self.frontend.on_item_done, done)
        meta, tensors = (item.meta, item.tensors) if item is not None else (None, None)
        dst = self.ranks[msg.language_rank]
        if dst is rank:  # colocated: handed over in process
            rank.engine.add_item(msg.request_id, msg.index, meta, tensors, res.error, res.timestamps)
            return
        self.loop.advance(self.costs.send_s)
        res.timestamps["transfer_start"] = self.loop.now
        nbytes = item_bytes(item) if item is not None else 0
        fixed, copy_s = self.costs.transfer_parts(nbytes, internode=dst.inst.node != rank.inst.node)
        dst.send(fixed, self._recv_item, dst, msg, meta, tensors, res.error, res.timestamps, copy_s)

    def _recv_item(self, dst: SimRank, msg, meta, tensors, error, timestamps, copy_s: float) -> None:
        self.loop.advance(copy_s)  # the receiving loop waits on recv(), as RankServer._dispatch does
        timestamps["transfer_end"] = self.loop.now
        dst.engine.add_item(msg.request_id, msg.index, meta, tensors, error, timestamps)

    def output(self, rank: SimRank, out: RequestOutput) -> None:
        """An engine output: to the frontend; a decode instance's finished request leaves its ledger."""
        if rank.inst.role == "decode":
            if out.finished:
                self.decode_policy.load.finish(rank.inst.leader, out.request_id)
            else:
                self.decode_policy.load.admit(out.request_id)  # it holds its blocks there now
        self.loop.advance(self.costs.send_s)
        self.loop.at(self.loop.now + self.latency, self.frontend.receive, self.frontend.on_output, out)

    def tokens_out(self, rank: SimRank, run, steps: range) -> None:
        """Steps of a run of decode steps: each sequence got a token at each step's end, sent in
        running order (``send_s`` each), received ``latency`` later."""
        ends = np.asarray(run.ends[steps.start : steps.stop])
        ids = [seq.id for seq in run.seqs]
        first = float(ends[0]) + self.costs.send_s + self.latency + self.costs.recv_s
        self.loop.at(max(first, self.loop.event_time), self._tokens_arrive, ids, ends)

    def _tokens_arrive(self, request_ids: list[str], ends: np.ndarray) -> None:
        base = ends + self.latency + self.costs.recv_s
        for pos, request_id in enumerate(request_ids):
            tracked = self.frontend.inflight.get(request_id)
            if tracked is not None:
                self.frontend.add_token_times(tracked.record, (base + (pos + 1) * self.costs.send_s).tolist())

    # ---- prefill → decode ----------------------------------------------------------------------------

    def refresh_decode_load(self) -> None:
        """The decode instances' free blocks as of now (the real frontend has them from heartbeats)."""
        for leader in self.decode_policy.ranks:
            self.ranks[leader].settle(self.loop.event_time)
            self.report_free_blocks(self.ranks[leader])

    def hand_off(self, src: SimRank, seq: Sequence) -> None:
        """``LanguageEngine._hand_off`` + ``RankServer``: the prefill instance sampled ``seq``'s first token
        and freed its blocks; its KV cache goes to the decode instance the frontend chose, whose loop
        receives it (``add_prefilled``) and whose scheduler admits it when it has the blocks."""
        dst = self.ranks[seq.request.decode_rank]
        seq.timestamps["kv_transfer_start"] = self.loop.now
        total = self.costs.kv_transfer_bytes(seq.prompt_len)  # each of the tp ranks sends its shard at once
        fixed, copy_s = self.costs.transfer_parts(
            total / src.inst.tp, internode=dst.inst.node != src.inst.node, kind="kv_transfer"
        )
        moved = Sequence(request=seq.request)
        moved.token_ids = list(seq.token_ids)
        moved.prompt_len = seq.prompt_len
        moved.output_ids = list(seq.output_ids)
        moved.prepared_items = seq.prepared_items
        moved.item_spans = list(seq.item_spans)
        moved.num_cached_prompt, moved.num_preemptions = seq.num_cached_prompt, seq.num_preemptions
        moved.timestamps = dict(seq.timestamps)
        moved.kv_transfer_bytes = int(total)
        self.loop.advance(self.costs.send_s)
        dst.send(fixed, self._recv_kv, dst, moved, copy_s)

    def _recv_kv(self, dst: SimRank, seq: Sequence, copy_s: float) -> None:
        self.loop.advance(copy_s)  # the receiving loop waits on recv(), as for an item
        dst.engine.add_prefilled(seq)

    def report_free_blocks(self, rank: SimRank) -> None:
        """A decode instance tells the prefill side its free KV blocks (after each of its turns)."""
        self.decode_policy.load.report(rank.inst.leader, rank.engine.blocks.num_free)

    def work_by_process(self) -> dict[str, dict[str, float]]:
        """Profiled work booked so far, per device and per process (``rankN``: its loop, tower, engine steps
        and decode threads; ``frontend``), in seconds."""
        labels: dict[object, str] = {self.frontend: "frontend"} if self.frontend is not None else {}
        pools: dict[int, str] = {}
        for leader, rank in self.ranks.items():
            labels[rank] = f"rank{leader}"
            if rank.pool is not None:
                pools[id(rank.pool)] = f"rank{leader}"
        devices = {id(d): d for d in (*self.devices.values(), *self.hosts.values(), self.host_of_frontend)}
        out: dict[str, dict[str, float]] = {}
        for dev in devices.values():
            per = out.setdefault(dev.name, {})
            for owner, work in dev.busy_by.items():
                # (id(pool), thread): a decode thread of a rank's process
                label = pools.get(owner[0], "other") if isinstance(owner, tuple) else labels.get(owner, "other")
                per[label] = per.get(label, 0.0) + work
        return out

    def peak_utilisation(self, facts: dict) -> float:
        """The busiest device's share of the measured phase spent on booked work (work / capacity / duration)."""
        duration = max(facts["end"] - facts["start"], 1e-9)
        capacity = {d.name: d.capacity for d in (*self.devices.values(), *self.hosts.values(), self.host_of_frontend)}
        work = facts.get("work_s", {})
        return max((sum(per.values()) / capacity[dev] / duration for dev, per in work.items()), default=0.0)

    # ---- the run ----------------------------------------------------------------------------------------

    def requests(self) -> list[SimRequest]:
        """The workload of ``epd.run``'s generators (no media written), sized for the simulator."""
        run = self.cfg.run
        mode = self.cfg.sim.tokenize
        if mode == "auto":
            mode = "exact" if run.workload.name == "file" and self.processor is not None else "words"
        sizer = PromptSizer(self.profile, run.scheduler, mode, self.processor)
        reqs = [sizer.build(r) for r in build_workload(run.workload, _media_dir(run), None, write_media=False)]
        for req in reqs:
            for item in req.items:
                self.items.setdefault(item.source, item)
        return reqs

    def run(self) -> tuple[list[SimRecord], dict]:
        """Play the workload; return every record (warm-up ones flagged) and the run's facts."""
        wall, cpu = time.perf_counter(), time.process_time()
        requests = self.requests()
        build_s = time.perf_counter() - wall
        n = sum(1 for r in requests if not r.req.warmup)
        mode = self.cfg.sim.token_times
        all_times = mode == "all" or (mode == "auto" and n <= ALL_TOKEN_TIMES_UP_TO)
        prompt_ranks = [inst.leader for inst in self.topology.prompt_instances]
        self.frontend = SimFrontend(self, self.policy, prompt_ranks, all_times)
        facts: dict[str, Any] = {}

        def measured() -> None:
            facts["start"] = self.loop.now
            facts["work_before"] = self.work_by_process()
            facts["driver"] = self.frontend.play([r for r in requests if not r.req.warmup], then=finished)

        def finished() -> None:
            facts["end"] = self.loop.now
            facts["work_s"] = _minus(self.work_by_process(), facts.pop("work_before", {}))

        with clock.installed(self.loop):
            self.frontend.play([r for r in requests if r.req.warmup], then=measured)
            self.loop.run(until=self.horizon)
        records = list(self.frontend.records)
        if "work_s" not in facts:
            facts["work_s"] = _minus(self.work_by_process(), facts.pop("work_before", {}))
        if "end" not in facts:  # stopped early
            facts.setdefault("start", 0.0)
            facts.setdefault("driver", self.frontend.driver)
            facts["end"] = self.loop.now if math.isfinite(self.horizon) else self.loop.now
            records += self.frontend.unfinished()
        facts.update(all_token_times=all_times, events=self.loop.events, wall_s=time.perf_counter() - wall,
                     cpu_s=time.process_time() - cpu, build_s=build_s)  # fmt: skip
        return records, facts


def load_alone(cfg: SimRunConfig, profile: dict, processor: Any = None) -> float:
    """The load a calibration at several loads is indexed by: the busiest device's utilisation in the run
    ``cfg`` describes, simulated from ``profile`` without its calibration (``Simulation.peak_utilisation``)."""
    sim = Simulation(cfg, {k: v for k, v in profile.items() if k != "calibration"}, processor)
    _, facts = sim.run()
    return sim.peak_utilisation(facts)


def _minus(after: dict[str, dict[str, float]], before: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {dev: {k: v - before.get(dev, {}).get(k, 0.0) for k, v in per.items()} for dev, per in after.items()}


def _media_dir(run) -> Any:
    from pathlib import Path

    return Path(run.run_dir) / "media"


def load_processor(model_cfg) -> Any:
    """The checkpoint's processor (token counts of images; exact tokenization), or None when it cannot load."""
    try:
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(resolve_checkpoint(model_cfg))
    except Exception as exc:  # the simulator can run from the profile alone
        log.warning("no processor for %s (%s): image tokens from scheduler.pixels_per_token", model_cfg, exc)
        return None
