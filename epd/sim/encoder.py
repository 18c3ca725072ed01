"""An encoder instance in simulation: epd's own ``EncoderRole`` with simulated decode threads and tower.

The role itself runs unchanged: its cache lookup, in-flight sharing, ready list, ``BatchRule``
batching and ``EmbeddingCache`` (both tiers, LRU, byte budgets). Two parts of it are simulated:

- ``SimPool`` replaces its decode threads: ``encoder.decode_threads`` threads take items in order;
  an item's fetch runs on its thread, then its processor call waits for the processor's lock (one
  at a time per encoder, as ``TowerEncoder.preprocess`` serialises them); its future is done when
  the processor finishes.
- ``SimTower`` replaces the towers: an ``encode`` call lasts the profile's tower time for its items
  (on its device, shared or not) and returns embeddings that hold no memory (a broadcast view of
  one element with the real shape, so the cache counts the real bytes).
"""

from __future__ import annotations

import heapq
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import torch

from epd.encoder import EncoderRole
from epd.encoder.config import EncoderConfig
from epd.media import MediaConfig
from epd.models import MODALITY_TYPE, TEXT, EncodedItem, ItemMeta, MediaInput, TowerEncoder
from epd.protocol import EncodeItem
from epd.scheduler.config import SchedulerConfig
from epd.sim.costs import CostModel
from epd.sim.events import Device, EventLoop
from epd.sim.requests import SimItem


@dataclass(kw_only=True)
class SimItemMeta(ItemMeta):
    """``ItemMeta`` that knows its embedding count (the real one counts its token types each time)."""

    embeds: int = 0

    @property
    def num_embeds(self) -> int:
        return self.embeds


class SimFuture:
    """A decode that finishes at ``done_at`` on the simulated clock."""

    def __init__(self, loop: EventLoop, done_at: float, value: Any) -> None:
        self.loop = loop
        self.done_at = done_at
        self.value = value

    def done(self) -> bool:
        return self.loop.now >= self.done_at

    def result(self) -> Any:
        return self.value

    def cancel(self) -> bool:
        return False


class SimPool(Executor):
    """The encoder's decode threads (see the module docstring); ``submit`` ignores the callable it is
    given (the role's ``_decode``) and times the item from the cost model instead."""

    def __init__(
        self, loop: EventLoop, threads: int, costs: CostModel, items: dict[str, SimItem], host: Device
    ) -> None:
        self.loop = loop
        self.costs = costs
        self.items = items
        self.host = host
        self._threads = [(0.0, i) for i in range(threads)]  # (when each thread is free, its index): a heap
        self._lock_free = 0.0
        self._pending: list[float] = []  # done_at of futures not yet done (a heap)

    def submit(self, fn, msg: EncodeItem, *args, **kwargs) -> SimFuture:  # noqa: ARG002 - the role's _decode
        item = self.items[msg.source]
        now = self.loop.now
        free_at, thread = heapq.heappop(self._threads)
        start = max(now, free_at)
        owner = (id(self), thread)
        fetched = start + self.host.run(start, self.costs.fetch_s(item.size), owner)
        begin = max(fetched, self._lock_free)
        done = begin + self.host.run(begin, self.costs.preprocess_s(item.size), owner)
        self._lock_free = done
        heapq.heappush(self._threads, (done, thread))
        heapq.heappush(self._pending, done)
        stamps = {"fetch_start": start, "fetch_end": fetched, "preprocess_end": done}
        inp = MediaInput(modality=item.modality, data=item)
        return SimFuture(self.loop, done, (inp, item.tokens, stamps))

    def collected(self, at: float) -> None:
        """The role collected every decode done by ``at`` (``EncoderRole.step`` starts by collecting)."""
        pending = self._pending
        while pending and pending[0] <= at:
            heapq.heappop(pending)

    def next_done(self) -> float | None:
        """When the earliest decode the role has not collected is (or was) done; None: none."""
        return self._pending[0] if self._pending else None

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


class SimTower(TowerEncoder):
    """Tower calls timed by the profile; embeddings without memory (module docstring)."""

    def __init__(self, loop: EventLoop, costs: CostModel, device: Device, modalities: tuple[str, ...],
                 spans: dict[str, list[int]], pad_ids: dict[str, int], dtype: torch.dtype) -> None:  # fmt: skip
        self.loop = loop
        self.costs = costs
        self.device = device
        self.modalities = modalities
        self.spans = spans
        self.pad_ids = pad_ids
        model = costs.model
        self.hidden = int(model["hidden_size"])
        self.deepstack = int(model.get("embed_rows", 1)) - 1
        self._one = torch.zeros((1, 1), dtype=dtype)
        self._views: dict[tuple[int, ...], torch.Tensor] = {}  # broadcast views by shape, made once
        self.calls = 0
        self.owner: object = self
        """Who runs the tower calls on the device (the rank's process: ``Device`` contention)."""

    def set_preprocess_device(self, mode: str) -> None:  # noqa: ARG002 - the profile timed the processor where it ran
        self._device_preprocessor = None

    def _process(self, inp: MediaInput) -> Any:
        return inp.data

    def encode(self, inputs: list[MediaInput]) -> list[EncodedItem]:
        by_modality: dict[str, list[int]] = {}
        for inp in inputs:
            by_modality.setdefault(inp.modality, []).append(inp.data.tokens)
        self.loop.advance(self.device.run(self.loop.now, self.costs.tower_s(by_modality), self.owner))
        self.calls += 1
        return [self._encoded(inp.data) for inp in inputs]

    def _encoded(self, item: SimItem) -> EncodedItem:
        n = item.tokens
        pad = self.pad_ids[item.modality]
        ids: list[int] = []
        for tok in self.spans[item.modality]:
            ids += [pad] * n if tok == pad else [tok]
        kind = MODALITY_TYPE[item.modality]
        types = [kind if tok == pad else TEXT for tok in ids] if len(ids) != n else [kind] * n
        meta = SimItemMeta(modality=item.modality, token_ids=ids, token_types=types, info={}, embeds=n)
        tensors = {"embeds": self._view(n, self.hidden)}  # [n, H], one element of memory
        if self.deepstack and item.modality != "audio":
            tensors["deepstack"] = self._view(self.deepstack, n, self.hidden)  # [k, n, H]
        return EncodedItem(meta=meta, tensors=tensors)

    def _view(self, *shape: int) -> torch.Tensor:
        view = self._views.get(shape)
        if view is None:
            view = self._views[shape] = self._one.expand(*shape)
        return view


def build_encoder_role(
    loop: EventLoop,
    costs: CostModel,
    cfg: EncoderConfig,
    media: MediaConfig,
    scheduler: SchedulerConfig,
    items: dict[str, SimItem],
    device: Device,
    host: Device,
    modalities: tuple[str, ...],
    prompt: dict,
    owner: object = None,
) -> tuple[EncoderRole, SimPool]:
    """epd's ``EncoderRole`` over a simulated tower and decode pool; ``owner``: the process whose GPU work
    the tower calls are (a colocated rank's tower calls and engine steps take turns, never compete)."""
    dtype = torch.float32 if int(costs.model["dtype_bytes"]) == 4 else torch.bfloat16
    tower = SimTower(loop, costs, device, modalities, prompt["placeholder_ids"], prompt["pad_ids"], dtype)
    if owner is not None:
        tower.owner = owner
    pool = SimPool(loop, cfg.decode_threads, costs, items, host)
    role = EncoderRole(tower, media, cfg, scheduler, torch.device("cpu"), pool=pool)
    return role, pool
