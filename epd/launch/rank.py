"""What every rank runs: load its roles, then one event loop until the frontend says stop.

Loop order per turn: drain the control inbox (requests, items, shutdown), run one encoder batch,
run one language step, let the transfer backend make progress. A rank that is idle blocks on its
inbox for a few milliseconds instead of spinning (an encoder waiting on its decode threads or its
batch's max wait, for at most that long).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from epd.config import RunConfig
from epd.encoder import EncodeResult, EncoderRole
from epd.language import LanguageEngine
from epd.launch.device import gpu_index, rank_device
from epd.metrics.memory import report_peak_memory, reset_peak_memory
from epd.models import ItemMeta, detect_family, resolve_checkpoint, torch_dtype
from epd.protocol import FRONTEND, Abort, Channel, EncodeItem, ItemReady, NewRequest, Shutdown, rank_name
from epd.protocol.messages import ItemDone
from epd.transfer import build_transfer

log = logging.getLogger("epd")

IDLE_WAIT_MS = 5
"""How long an idle rank blocks on its inbox per turn."""


@dataclass(frozen=True, kw_only=True)
class RankContext:
    """Where this rank sits in the job; filled in by the launcher (torchrun's or epd's)."""

    rank: int
    world_size: int
    local_rank: int
    store_host: str
    store_port: int


def run_rank(cfg: RunConfig, ctx: RankContext, store: dist.Store | None = None) -> int:
    """Serve this rank's roles until shutdown; rank 0 also runs the frontend process. Returns an exit code."""
    device = rank_device(cfg.device, cfg.topology, ctx.rank, ctx.local_rank)
    if device.type == "cpu" and ctx.world_size > 1:  # ranks sharing the cores: oversubscribed BLAS threads crawl
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.world_size))
    reset_peak_memory(device)
    if store is None:
        store = dist.TCPStore(ctx.store_host, ctx.store_port, is_master=False, timeout=timedelta(minutes=10))
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.PrefixStore("epd_pg", store), rank=ctx.rank, world_size=ctx.world_size)
    frontend = _start_frontend(cfg, ctx) if ctx.rank == 0 else None
    try:
        server = RankServer(cfg, ctx, device, store)
        store.set(f"epd/ready/{ctx.rank}", "1")
        server.serve(frontend)
        report_peak_memory(store, ctx.rank, device)  # read by the frontend for results.json
        server.close()
        return frontend.wait() if frontend is not None else 0
    finally:
        if frontend is not None and frontend.poll() is None:
            frontend.terminate()
        dist.destroy_process_group()


class RankServer:
    def __init__(self, cfg: RunConfig, ctx: RankContext, device: torch.device, store: dist.Store) -> None:
        self.rank = ctx.rank
        self.channel = Channel(rank_name(ctx.rank), store)
        role = cfg.topology.instance_at(ctx.rank).role
        if role in ("prefill", "decode") or cfg.topology.instance_at(ctx.rank).tp > 1:
            raise ValueError(f"topology {cfg.topology.name!r}: {role} instances and tp > 1 are not served yet")
        ckpt = resolve_checkpoint(cfg.model)
        family = detect_family(ckpt)
        dtype = torch_dtype(cfg.model.dtype, device)
        self.encoder = self.language = None
        if role in ("encoder", "colocated"):
            tower = family.load_encoder(ckpt, cfg.model.random_init, device, dtype, cfg.model.tower_attention)
            self.encoder = EncoderRole(tower, cfg.media, cfg.encoder, cfg.scheduler, device)
            self.encoder.warm_up()
            store.set(f"epd/loaded/{ctx.rank}", "1")
        if role in ("language", "colocated"):
            # the KV cache is sized from the memory left on the device: encoders sharing this GPU load first
            shared = [
                r
                for r in cfg.topology.encoder_ranks
                if r != ctx.rank and device.type == "cuda" and gpu_index(cfg.topology, r, r) == device.index
            ]
            if shared:
                store.wait([f"epd/loaded/{r}" for r in shared])
            side = family.load_language(ckpt, cfg.model.random_init)
            self.language = LanguageEngine(side, cfg.engine, device, dtype)
        self.transfer = (
            build_transfer(cfg.transfer, ctx.rank, ctx.world_size, device, store) if ctx.world_size > 1 else None
        )
        self._warm_up()
        log.info("rank %d: %s on %s (%s, %s)", ctx.rank, role, device, family.name, dtype)

    def _warm_up(self) -> None:
        """One small pass through the language role (the encoder's ran at load), so the first request
        does not pay for lazy init."""
        if self.language is not None:
            self.language.warm_up()

    def serve(self, frontend: subprocess.Popen | None) -> None:
        while True:
            for msg in self.channel.recv(self._inbox_wait_ms()):
                if isinstance(msg, Shutdown):
                    return
                self._dispatch(msg)
            if self.encoder and self.encoder.has_work:
                for result in self.encoder.step():
                    self._deliver(result)
            if self.language and self.language.has_work:
                for out in self.language.step():
                    self.channel.send(FRONTEND, out)
            if self.transfer is not None:
                self.transfer.poll()
            if frontend is not None and frontend.poll() is not None:
                raise RuntimeError(f"the frontend process exited with code {frontend.returncode} before shutdown")

    def _inbox_wait_ms(self) -> int:
        if self.language and self.language.has_work:
            return 0
        wait_s = self.encoder.wait_s() if self.encoder else None
        return IDLE_WAIT_MS if wait_s is None else min(IDLE_WAIT_MS, int(wait_s * 1e3))

    def _dispatch(self, msg) -> None:
        if isinstance(msg, EncodeItem):
            self.encoder.add(msg)
        elif isinstance(msg, NewRequest):
            self.language.add_request(msg)
        elif isinstance(msg, Abort):
            self.language.abort(msg.request_id)
        elif isinstance(msg, ItemReady):
            # receive right away, in arrival order: point-to-point backends match sends by order
            tensors = meta = None
            if msg.handle is not None:
                tensors = dict(zip(msg.tensor_names, self.transfer.recv(msg.handle), strict=True))
                meta = ItemMeta(
                    modality=msg.modality, token_ids=msg.token_ids, token_types=msg.token_types, info=msg.info
                )
            msg.timestamps["transfer_end"] = time.time()
            self.language.add_item(msg.request_id, msg.index, meta, tensors, msg.error, msg.timestamps)
        else:
            raise RuntimeError(f"rank {self.rank} got an unexpected {type(msg).__name__}")

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
        handle = self.transfer.send(dst, list(item.tensors.values())) if item is not None else None
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
        if self.encoder is not None:
            self.encoder.close()
        if self.transfer is not None:
            self.transfer.close()
        self.channel.close()


def _start_frontend(cfg: RunConfig, ctx: RankContext) -> subprocess.Popen:
    """The frontend runs in its own process beside rank 0 and dies with it (no orphans)."""
    config_file = Path(cfg.run_dir) / "epd_config.json"
    cmd = [sys.executable, "-m", "epd.frontend", str(config_file), ctx.store_host, str(ctx.store_port)]
    return subprocess.Popen(cmd, preexec_fn=_die_with_parent)


def _die_with_parent() -> None:
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
