"""What every rank runs: load its roles, then one event loop until the frontend says stop.

Loop order per turn: drain the control inbox (requests, items, shutdown), run one encoder batch,
run one language step, let the transfer backend make progress. A rank that is idle blocks on its
inbox for a few milliseconds instead of spinning.
"""

from __future__ import annotations

import logging
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
from epd.launch.device import rank_device
from epd.models import ItemMeta, detect_family, resolve_checkpoint, torch_dtype
from epd.protocol import FRONTEND, Channel, EncodeItem, ItemReady, NewRequest, Shutdown, rank_name
from epd.transfer import build_transfer

log = logging.getLogger("epd")


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
    if store is None:
        store = dist.TCPStore(ctx.store_host, ctx.store_port, is_master=False, timeout=timedelta(minutes=10))
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.PrefixStore("epd_pg", store), rank=ctx.rank, world_size=ctx.world_size)
    frontend = _start_frontend(cfg, ctx) if ctx.rank == 0 else None
    try:
        server = RankServer(cfg, ctx, device, store)
        store.set(f"epd/ready/{ctx.rank}", "1")
        server.serve(frontend)
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
        role = cfg.topology.instances[ctx.rank].role
        ckpt = resolve_checkpoint(cfg.model)
        family = detect_family(ckpt)
        dtype = torch_dtype(cfg.model.dtype, device)
        self.encoder = self.language = None
        if role in ("encoder", "colocated"):
            self.encoder = EncoderRole(family.load_encoder(ckpt, cfg.model.random_init, device, dtype), cfg.media)
        if role in ("language", "colocated"):
            side = family.load_language(ckpt, cfg.model.random_init, device, dtype)
            self.language = LanguageEngine(side, cfg.engine, device)
        self.transfer = (
            build_transfer(cfg.transfer, ctx.rank, ctx.world_size, device, store) if ctx.world_size > 1 else None
        )
        self._warm_up()
        log.info("rank %d: %s on %s (%s, %s)", ctx.rank, role, device, family.name, dtype)

    def _warm_up(self) -> None:
        """One small pass through each role, so the first request does not pay for lazy init."""
        if self.encoder is not None:
            self.encoder.warm_up()
        if self.language is not None:
            self.language.warm_up()

    def serve(self, frontend: subprocess.Popen | None) -> None:
        while True:
            busy = (self.encoder and self.encoder.has_work) or (self.language and self.language.has_work)
            for msg in self.channel.recv(0 if busy else 5):
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

    def _dispatch(self, msg) -> None:
        if isinstance(msg, EncodeItem):
            self.encoder.add(msg)
        elif isinstance(msg, NewRequest):
            self.language.add_request(msg)
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
        dst = res.msg.language_rank
        item = res.item
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
