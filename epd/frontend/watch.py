"""The frontend's watch over the job: rank heartbeats, ranks the launcher reports lost, signals.

A rank is lost when the launcher says its process ended (``PeerLost``) or when it has been silent for
``launch.heartbeat_timeout_s`` (stopped, hung or dead on another node). A lost encoder is taken out of
the assignment policy and its items go to the surviving encoders — every item of a request still
waiting for its first token, since the lost encoder may have sent some and not others — when the data
plane allows it (shm, zmq: a dead peer leaves no collective behind, unlike nccl's process group). Any
other loss, or a signal, ends the job (``JobStopped``): finished results are kept, the rest aborted.
"""

from __future__ import annotations

import logging
import signal
import time

from epd.frontend.frontend import Frontend, JobStopped
from epd.launch import exit_codes
from epd.launch.liveness import Liveness
from epd.protocol import Heartbeat, PeerLost, rank_name
from epd.scheduler import build_encoder_policy

log = logging.getLogger("epd.frontend")

FAILOVER_BACKENDS = ("shm", "zmq")


class JobWatch:
    def __init__(self, frontend: Frontend) -> None:
        self.fe = frontend
        self.cfg = frontend.cfg
        topology = self.cfg.topology
        self.liveness = Liveness(
            [rank_name(r) for r in range(topology.world_size)], self.cfg.launch.heartbeat_timeout_s
        )

    def heard(self, sender: str) -> None:
        self.liveness.heard(sender)

    def on_message(self, sender: str, msg) -> None:
        if isinstance(msg, PeerLost):
            self.rank_lost(msg.rank, msg.reason)
        elif isinstance(msg, Heartbeat):
            if sender.startswith("rank"):
                rank = int(sender[4:])
                self.fe.rank_stats[rank] = dict(msg.stats)
                policy = self.fe.decode_policy
                if policy is not None and rank in policy.load.free_blocks and "kv_free_blocks" in msg.stats:
                    policy.load.report(rank, int(msg.stats["kv_free_blocks"]))
        else:
            self.fe.channel._drop("misrouted", f"{type(msg).__name__} from {sender} to the frontend")

    def check(self) -> None:
        """Raise ``JobStopped`` for a signal; handle ranks that went silent."""
        if self.fe.signals:
            signum = self.fe.signals[0]
            raise JobStopped(f"interrupted by {signal.Signals(signum).name}", exit_codes.for_signal(signum))
        for name in self.liveness.overdue():
            timeout = self.cfg.launch.heartbeat_timeout_s
            self.rank_lost(int(name[4:]), f"rank {name[4:]} has been silent for {timeout:g} s (stopped or hung)")

    def rank_lost(self, rank: int, reason: str) -> None:
        if rank in self.fe.lost or not 0 <= rank < self.cfg.topology.world_size:
            return
        self.fe.lost.add(rank)
        self.liveness.forget(rank_name(rank))
        role = self.cfg.topology.instance_at(rank).role
        log.error("lost rank %d (%s): %s", rank, role, reason)
        if role == "encoder" and self.cfg.transfer.backend in FAILOVER_BACKENDS:
            self._encoder_lost(rank, reason)
            return
        if role == "encoder":
            reason += f" (transfer={self.cfg.transfer.backend} cannot go on without it; shm and zmq can)"
        self.fe.events.append({"time": time.time(), "event": "rank_lost", "rank": rank, "role": role, "reason": reason})
        raise JobStopped(reason, exit_codes.JOB_FAILED)

    def _encoder_lost(self, rank: int, reason: str) -> None:
        """Take ``rank`` out of the policy and send its unfinished items to the other encoders."""
        fe = self.fe
        fe.encoders = {r: mods for r, mods in fe.encoders.items() if r != rank}
        resend = {}
        for tracked in fe.inflight.values():
            if tracked.record.token_times:
                continue  # past its prefill: it needs no item any more
            idx = [i for i, enc in enumerate(tracked.encoders) if enc == rank]
            if idx:
                resend[tracked.req.id] = (tracked, idx)
        for key in [k for k, (_, _, enc) in fe.unreported.items() if enc == rank]:
            del fe.unreported[key]
        if fe.encoders:
            fe.policy = build_encoder_policy(self.cfg.scheduler, fe.encoders)
            for _tracked, item, enc in fe.unreported.values():  # the survivors' outstanding work
                fe.policy.load.charge(item, enc)
        num_items, failed = 0, 0
        for tracked, idx in resend.values():
            items = [tracked.items[i] for i in idx]
            try:
                if not fe.encoders:
                    raise ValueError("no encoder is left")
                ranks = fe.policy.assign(items)
            except ValueError as exc:
                fe.abort(tracked, f"aborted: {reason}; its items could not go elsewhere ({exc})")
                failed += 1
                continue
            for i, item, new in zip(idx, items, ranks, strict=True):
                tracked.encoders[i] = new
                tracked.record.items[i].update(encoder=new, resent_from=rank)
                fe.send_item(tracked, item, new)
                num_items += 1
        log.warning(
            "encoder rank %d lost: %d item(s) re-sent to the other encoders, %d request(s) failed",
            rank,
            num_items,
            failed,
        )
        fe.events.append(
            {
                "time": time.time(),
                "event": "encoder_lost",
                "rank": rank,
                "reason": reason,
                "items_resent": num_items,
                "requests_failed": failed,
            }
        )
