"""A rank's event loop: its roles (encoder, language or both), the control inbox and the data plane.

Loop order per turn: drain the control inbox (requests, items, shutdown, heartbeats), receive the
embeddings that have arrived, run one encoder batch, run one language step, let the transfer backend
make progress. A rank that is idle blocks on its inbox for a few milliseconds instead of spinning.

Nothing a message carries can stop the loop: the channel drops what is not authentic or not allowed
(``epd.protocol.channel``), a message of a type this rank's roles do not take is dropped and counted,
and an item whose embeddings cannot be received fails its own request. The frontend beats every
``launch.heartbeat_interval_s``; when it has been silent for ``launch.heartbeat_timeout_s`` the rank
stops with an error naming it.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections import deque

import torch
import torch.distributed as dist

from epd.config import RunConfig
from epd.encoder import EncodeResult, EncoderRole
from epd.language import LanguageEngine
from epd.language.parallel import TensorParallel
from epd.language.runner import ModelRunner
from epd.launch.device import gpu_index
from epd.launch.liveness import HeartbeatThread
from epd.launch.rank import RankContext
from epd.models import ItemMeta, detect_family, resolve_checkpoint, torch_dtype
from epd.protocol import (
    FRONTEND,
    Abort,
    Channel,
    EncodeItem,
    Heartbeat,
    ItemDone,
    ItemReady,
    KvReady,
    NewRequest,
    RequestOutput,
    Shutdown,
    job_roles,
    rank_name,
)
from epd.transfer import build_transfer

log = logging.getLogger("epd")

IDLE_WAIT_MS = 5
"""How long an idle rank blocks on its inbox per turn."""
KV_TOKENS_KEY = "epd/kv_tokens/{rank}"
"""Store key where a language rank publishes its KV-cache capacity in tokens (the frontend checks requests
against it)."""


class FrontendLost(RuntimeError):
    """The frontend stopped beating or its process ended before it said stop."""


class RankServer:
    def __init__(
        self,
        cfg: RunConfig,
        ctx: RankContext,
        device: torch.device,
        store: dist.Store,
        secret: bytes,
        bind_host: str,
        frontend: subprocess.Popen | None = None,
        tp: TensorParallel | None = None,
    ) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.rank = ctx.rank
        self.frontend = frontend
        roles = job_roles(cfg.topology, cfg.launch.nnodes)
        self.channel = Channel(rank_name(ctx.rank), store, secret, roles, bind_host, cfg.launch.max_message_bytes)
        inst = cfg.topology.instance_at(ctx.rank)
        tp = tp or TensorParallel()
        if tp.enabled and inst.role in ("prefill", "decode"):
            raise ValueError(
                f"topology {cfg.topology.name!r}: tp > 1 on {inst.role} instances is not supported yet (moving KV "
                "shards between tensor-parallel instances); use tp on language instances"
            )
        ckpt = resolve_checkpoint(cfg.model)
        family = detect_family(ckpt)
        dtype = torch_dtype(cfg.model.dtype, device)
        self.encoder = self.language = self.follower = None
        if inst.role in ("encoder", "colocated"):
            tower = family.load_encoder(ckpt, cfg.model.random_init, device, dtype, cfg.model.tower_attention)
            self.encoder = EncoderRole(tower, cfg.media, cfg.encoder, cfg.scheduler, device)
            self.encoder.warm_up()
            store.set(f"epd/loaded/{ctx.rank}", "1")
        if inst.role in ("language", "colocated", "prefill", "decode"):
            # the KV cache is sized from the memory left on the device: encoders sharing this GPU load first
            per_node = ctx.local_world_size or ctx.world_size
            node = ctx.rank // per_node
            shared = [
                r
                for r in cfg.topology.encoder_ranks
                if r != ctx.rank
                and r // per_node == node
                and device.type == "cuda"
                and gpu_index(cfg.topology, r, r % per_node) == device.index
            ]
            if shared:
                store.wait([f"epd/loaded/{r}" for r in shared])
            side = family.load_language(ckpt, cfg.model.random_init)
            if tp.rank == 0:
                self.language = LanguageEngine(side, cfg.engine, device, dtype, role=inst.role, tp=tp)
            else:  # a follower of a tensor-parallel instance: its shard, stepped by the leader
                self.follower = ModelRunner(side, cfg.engine, device, dtype, tp=tp)
                self.follower.allocate_kv()
        self.transfer = None
        if ctx.world_size > 1:
            self.transfer = build_transfer(cfg.transfer, ctx.rank, ctx.world_size, device, store, secret, bind_host)
        if self.language is not None:
            self.language.warm_up()
            store.set(KV_TOKENS_KEY.format(rank=ctx.rank), str(self.language.capacity_tokens))
        # items whose embeddings, and prefilled requests whose KV cache, are on the way (in arrival order)
        self.parked: deque[tuple[ItemReady | KvReady, float]] = deque()
        log.info("rank %d: %s on %s (%s, %s)", ctx.rank, inst.role, device, family.name, dtype)

    # ---- the loop -------------------------------------------------------------------------------

    def serve(self) -> None:
        if self.follower is not None:
            self._follow()
            return
        launch = self.cfg.launch
        topology = self.cfg.topology
        peers = [FRONTEND] + ([rank_name(r) for r in topology.language_ranks] if self.encoder else [])
        if self.language is not None and self.language.role == "prefill":
            peers += [rank_name(r) for r in topology.decode_ranks]
        self.channel.resolve(peers)  # once, at start-up (waits until the frontend is up)
        frontend_address = self.channel.peer_address(FRONTEND)
        beat = HeartbeatThread(
            self.channel, [frontend_address], launch.heartbeat_interval_s, self.ctx.launcher_pid, self.stats
        )
        beat.start()
        heard = time.monotonic()
        try:
            while True:
                for sender, msg in self.channel.recv(self._inbox_wait_ms()):
                    if sender == FRONTEND:
                        heard = time.monotonic()
                    if isinstance(msg, Shutdown):
                        return
                    self._dispatch(msg)
                self._receive_arrived()
                if self.encoder and self.encoder.has_work:
                    for result in self.encoder.step():
                        self._deliver(result)
                if self.language and self.language.has_work:
                    for out in self.language.step():
                        self.channel.send(FRONTEND, out)
                    for handoff in self.language.take_handoffs():
                        self._send_kv(handoff)
                if self.transfer is not None:
                    self.transfer.poll()
                self._check_frontend(heard)
        finally:
            beat.stop()

    def _follow(self) -> None:
        """A follower beats like any rank and runs its leader's steps until the leader stops."""
        self.channel.resolve([FRONTEND])
        beat = HeartbeatThread(
            self.channel,
            [self.channel.peer_address(FRONTEND)],
            self.cfg.launch.heartbeat_interval_s,
            self.ctx.launcher_pid,
            self.stats,
        )
        beat.start()
        try:
            self.follower.follow()
        finally:
            beat.stop()

    def stats(self) -> dict[str, float]:
        """This rank's load, sent with every heartbeat (called from the heartbeat thread)."""
        out = {}
        if self.language is not None:
            out.update(self.language.stats())
        if self.encoder is not None:
            out.update(self.encoder.stats())
        out["parked_items"] = float(len(self.parked))
        out["dropped_messages"] = float(sum(self.channel.dropped.values()))
        return out

    def _check_frontend(self, heard: float) -> None:
        silent = time.monotonic() - heard
        if silent > self.cfg.launch.heartbeat_timeout_s:
            raise FrontendLost(
                f"rank {self.rank}: the frontend has been silent for {silent:.0f} s "
                f"(launch.heartbeat_timeout_s={self.cfg.launch.heartbeat_timeout_s:g}): stopping"
            )
        if self.frontend is not None and self.frontend.poll() is not None:
            raise FrontendLost(f"the frontend process exited with code {self.frontend.returncode} before shutdown")

    def _inbox_wait_ms(self) -> int:
        if (self.language and self.language.has_work) or self.parked:
            return 0
        wait_s = self.encoder.wait_s() if self.encoder else None
        return IDLE_WAIT_MS if wait_s is None else min(IDLE_WAIT_MS, int(wait_s * 1e3))

    def _dispatch(self, msg) -> None:
        if isinstance(msg, Heartbeat):
            return
        if isinstance(msg, EncodeItem) and self.encoder is not None:
            self.encoder.add(msg)
        elif isinstance(msg, NewRequest) and self.language is not None:
            self.language.add_request(msg)
        elif isinstance(msg, Abort) and (self.language is not None or self.encoder is not None):
            if self.language is not None:
                self.language.abort(msg.request_id)
            if self.encoder is not None:
                self.encoder.abort(msg.request_id)
        elif isinstance(msg, ItemReady) and self.language is not None:
            self._on_item_ready(msg)
        elif isinstance(msg, KvReady) and self.language is not None and self.language.role == "decode":
            self.parked.append((msg, time.monotonic() + self.cfg.transfer.recv_timeout_s))
        else:  # authentic, but not for this rank's roles
            self.channel._drop("misrouted", f"{type(msg).__name__} for a rank without that role")

    # ---- embeddings in --------------------------------------------------------------------------

    def _on_item_ready(self, msg: ItemReady) -> None:
        if msg.handle is None:
            msg.timestamps["transfer_end"] = time.time()
            self.language.add_item(msg.request_id, msg.index, None, None, msg.error, msg.timestamps)
            return
        self.parked.append((msg, time.monotonic() + self.cfg.transfer.recv_timeout_s))

    def _receive_arrived(self) -> None:
        """Receive parked items whose data is here; an item whose data does not come within
        ``transfer.recv_timeout_s`` fails. nccl matches a pair's sends by order, so there the items are
        taken strictly in arrival order; the other backends take whichever is ready, so one item whose
        sender died mid-send holds up no other."""
        if not self.parked:
            return
        in_order = self.transfer.name == "nccl"
        waiting: deque[tuple[ItemReady | KvReady, float]] = deque()
        while self.parked:
            msg, deadline = self.parked.popleft()
            try:
                if not self.transfer.ready(msg.handle):
                    if time.monotonic() < deadline:
                        waiting.append((msg, deadline))
                        if in_order:
                            break
                        continue
                    raise TimeoutError(f"no data within transfer.recv_timeout_s={self.cfg.transfer.recv_timeout_s:g}")
                tensors = dict(zip(msg.tensor_names, self.transfer.recv(msg.handle), strict=True))
                error = None
            except (ValueError, RuntimeError, TimeoutError, OSError) as exc:
                tensors = None
                error = f"{type(exc).__name__}: {exc}"
            self._received(msg, tensors, error)
        waiting.extend(self.parked)
        self.parked = waiting

    def _received(self, msg: ItemReady | KvReady, tensors: dict | None, error: str | None) -> None:
        if isinstance(msg, KvReady):
            self._on_kv(msg, tensors, error)
            return
        meta = None
        if error is None:
            meta = ItemMeta(modality=msg.modality, token_ids=msg.token_ids, token_types=msg.token_types, info=msg.info)
        else:
            error = f"its embeddings could not be received: {error}"
            log.warning("rank %d: item %d of %s: %s", self.rank, msg.index, msg.request_id, error)
        msg.timestamps["transfer_end"] = time.time()
        self.language.add_item(msg.request_id, msg.index, meta, tensors, error, msg.timestamps)

    # ---- KV cache between prefill and decode instances ------------------------------------------

    def _send_kv(self, handoff) -> None:
        """Send a prefilled request's KV cache and state to its decode instance (the same data plane as
        embeddings); if the send fails, the request fails."""
        dst = handoff.request.decode_rank
        try:
            handle = self.transfer.send(dst, list(handoff.tensors.values()))
        except (ValueError, RuntimeError, OSError) as exc:
            self._fail_request(handoff.request.request_id, f"its KV cache could not be sent: {exc}")
            return
        self.channel.send(
            rank_name(dst),
            KvReady(
                request=handoff.request,
                token_ids=handoff.token_ids,
                prompt_len=handoff.prompt_len,
                rope_delta=handoff.rope_delta,
                item_spans=handoff.item_spans,
                num_cached_tokens=handoff.num_cached_tokens,
                num_preemptions=handoff.num_preemptions,
                tensor_names=list(handoff.tensors),
                handle=handle,
                timestamps=handoff.timestamps,
            ),
        )

    def _on_kv(self, msg: KvReady, tensors: dict | None, error: str | None) -> None:
        if tensors is None or "kv" not in tensors:
            self._fail_request(msg.request.request_id, f"its KV cache could not be received: {error or 'no kv'}")
            return
        self.language.add_prefilled(msg, tensors)

    def _fail_request(self, request_id: str, error: str) -> None:
        log.warning("rank %d: request %s: %s", self.rank, request_id, error)
        self.channel.send(
            FRONTEND, RequestOutput(request_id=request_id, finished=True, finish_reason="error", error=error)
        )

    # ---- embeddings out -------------------------------------------------------------------------

    def _deliver(self, res: EncodeResult) -> None:
        self._deliver_item(res)
        self.channel.send(
            FRONTEND,
            ItemDone(
                request_id=res.msg.request_id,
                index=res.msg.index,
                encoder_rank=self.rank,
                num_tokens=res.num_tokens,
                est_tokens=res.est_tokens,
                cache=res.cache,
                batch_id=res.batch_id,
                batch_size=res.batch_size,
                batch_tokens=res.batch_tokens,
                error=res.error,
                timestamps=res.timestamps,
            ),
        )

    def _deliver_item(self, res: EncodeResult) -> None:
        dst = res.msg.language_rank
        item = res.item
        if item is not None and res.msg.content_hash is not None:  # the language side's prefix cache keys media on it
            item.meta.info["content_hash"] = res.msg.content_hash
        if dst == self.rank:  # colocated: hand over in process, no copy
            meta, tensors = (item.meta, item.tensors) if item is not None else (None, None)
            self.language.add_item(res.msg.request_id, res.msg.index, meta, tensors, res.error, res.timestamps)
            return
        res.timestamps["transfer_start"] = time.time()
        handle = None
        if item is not None:
            try:
                handle = self.transfer.send(dst, list(item.tensors.values()))
            except (ValueError, RuntimeError, OSError) as exc:  # the data plane refused: this item fails alone
                res.error, item = f"its embeddings could not be sent: {type(exc).__name__}: {exc}", None
        self.channel.send(
            rank_name(dst),
            ItemReady(
                request_id=res.msg.request_id,
                index=res.msg.index,
                modality=res.msg.modality,
                token_ids=item.meta.token_ids if item else [],
                token_types=item.meta.token_types if item else [],
                info=item.meta.info if item else {},
                tensor_names=list(item.tensors) if item else [],
                handle=handle,
                error=res.error,
                timestamps=res.timestamps,
            ),
        )

    def close(self) -> None:
        if self.language is not None:
            self.language.close()
        if self.encoder is not None:
            self.encoder.close()
        if self.transfer is not None:
            self.transfer.close()
        self.channel.close()
