"""The language engine: requests and their media embeddings in, tokens out.

``add_request`` and ``add_item`` collect a request's prompt and its items' embeddings; once all
are here the prompt is expanded (placeholder spans replaced by the items' spans), its embeddings
merged and its rope positions computed, and the sequence waits for the scheduler. ``step`` runs
one scheduled batch through the model runner and returns one ``RequestOutput`` per sequence that
produced a token, finished or failed.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from epd.expiring import ExpiringDict, ExpiringSet
from epd.language.block_manager import BlockManager
from epd.language.config import EngineConfig
from epd.language.parallel import TensorParallel
from epd.language.runner import ModelRunner
from epd.language.scheduler import Scheduler
from epd.language.sequence import Sequence
from epd.models import AUDIO, IMAGE, VIDEO, ItemMeta, LanguageSide
from epd.protocol import KvReady, NewRequest, RequestOutput
from epd_kernels import merge_embeddings

log = logging.getLogger("epd.language")

EARLY_ITEM_TTL_S = 120.0
"""How long an item that arrived before its request is kept waiting for it."""
ENDED_TTL_S = 600.0
"""How long an ended request's id is remembered, so that items still on the way for it are dropped."""


class LanguageEngine:
    def __init__(
        self,
        side: LanguageSide,
        cfg: EngineConfig,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        tensors: Iterable[tuple[str, torch.Tensor]] | None = None,
        role: str = "language",
        tp: TensorParallel | None = None,
    ) -> None:
        """``tensors``: the language model's weights by name, instead of ``side.weights`` (benchmarks).
        ``role``: ``language`` (prefill and decode), ``prefill`` (hand each request to its decode
        instance after its first token: ``take_handoffs``) or ``decode`` (``add_prefilled``). ``tp``: this
        engine leads a tensor-parallel instance (its followers run ``ModelRunner.follow``)."""
        if role not in ("language", "colocated", "prefill", "decode"):
            raise ValueError(f"a language engine cannot play role {role!r}")
        self.role = role
        self.handoffs: list[Handoff] = []
        self.side = side
        self.cfg = cfg
        self.device = device
        self.runner = ModelRunner(side, cfg, device, dtype, tensors, tp)
        num_blocks = self.runner.allocate_kv()
        self.blocks = BlockManager(num_blocks, cfg.block_size, cfg.prefix_cache)
        self.scheduler = Scheduler(cfg, self.blocks)
        self.seqs: dict[str, Sequence] = {}  # every request not finished yet
        # items that beat their NewRequest here (a request's prompt and its items travel apart)
        self._early_items: ExpiringDict[str, list[tuple]] = ExpiringDict(EARLY_ITEM_TTL_S)
        # requests that ended (finished, failed, aborted): their late or repeated items are dropped
        self._ended: ExpiringSet[str] = ExpiringSet(ENDED_TTL_S)
        self.max_context = min(cfg.max_model_len, _max_positions(side.hf_config) or cfg.max_model_len)
        self.steps = 0

    @property
    def capacity_tokens(self) -> int:
        return self.blocks.capacity_tokens

    def close(self) -> None:
        """Release this engine's followers (tensor parallelism)."""
        self.runner.stop_followers()

    def stats(self) -> dict[str, float]:
        """Load figures for heartbeats (read from another thread: plain counters only)."""
        return {
            "num_waiting": float(len(self.scheduler.waiting)),
            "num_running": float(len(self.scheduler.running)),
            "kv_free_blocks": float(self.blocks.num_free),
            "kv_total_blocks": float(len(self.blocks.ref) - 1),
        }

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work or any(seq.error is not None for seq in self.seqs.values())

    def warm_up(self) -> None:
        """Throw-away requests through prefill and decode, then the decode CUDA graphs. The second
        request repeats the first, so its prefill runs from the first's cached blocks: that path's
        first call (torch's ``varlen_attn``: 5.4 s on the H200 under torch 2.11) is paid here, not by
        the first real request with a prefix-cache hit."""
        from epd.protocol import SamplingParams

        n = min(2 * self.cfg.block_size + 1, self.blocks.capacity_tokens - 2)
        for i in range(2):
            req = NewRequest(
                request_id=f"__warmup{i}__",
                prompt_token_ids=list(range(n)),
                items=[],
                sampling=SamplingParams(max_tokens=2, ignore_eos=True),
            )
            self.add_request(req)
            while self.has_work:
                self.step()
        self.runner.capture_graphs()
        self.blocks.hits = self.blocks.queries = 0

    # ---- arrivals ---------------------------------------------------------------------------------

    def add_request(self, req: NewRequest) -> None:
        if req.request_id in self.seqs or req.request_id in self._ended:
            log.warning("request %s arrived twice: the second copy is dropped", req.request_id)
            return
        seq = Sequence(request=req)
        seq.stamp("language_arrival")
        self.seqs[req.request_id] = seq
        self.scheduler.add(seq)
        seq.error = self._length_error(len(req.prompt_token_ids), req.sampling.max_tokens, "with placeholders")
        for args in self._early_items.pop(req.request_id, None) or []:
            self.add_item(*args)
        self._maybe_prepare(seq)

    def _length_error(self, num_prompt: int, max_tokens: int, what: str) -> str | None:
        """Why a prompt of ``num_prompt`` tokens plus ``max_tokens`` cannot run here (None if it can)."""
        total = num_prompt + max_tokens
        if total > self.max_context:
            return (
                f"the prompt ({what}) has {num_prompt} tokens and max_tokens is {max_tokens}: {total} tokens, over "
                f"the context of {self.max_context}"
            )
        if total > self.blocks.capacity_tokens:
            return (
                f"the prompt ({what}) has {num_prompt} tokens and max_tokens is {max_tokens}: {total} tokens, more "
                f"than the KV cache holds ({self.blocks.capacity_tokens})"
            )
        return None

    def add_item(
        self,
        request_id: str,
        index: int,
        meta: ItemMeta | None,
        tensors: dict[str, torch.Tensor] | None,
        error: str | None,
        timestamps: dict[str, float],
    ) -> None:
        """An encoder's result for one item; an error fails the whole request."""
        seq = self.seqs.get(request_id)
        if seq is None:
            if request_id not in self._ended:
                self._early_items.setdefault(request_id, []).append(
                    (request_id, index, meta, tensors, error, timestamps)
                )
            return
        if not 0 <= index < len(seq.request.items) or index in seq.items or index < seq.prepared_items:
            return  # a copy of an item already here (re-sent after its encoder was lost), or no such item
        seq.merge_item_timestamps(timestamps)
        if error is not None:
            seq.error = seq.error or f"media item {index}: {error}"
        elif meta is not None and tensors is not None:
            seq.items[index] = (meta, tensors)
        self._maybe_prepare(seq)

    def abort(self, request_id: str) -> None:
        """Stop a request (the frontend saw a stop string, or the client left); its blocks are freed."""
        seq = self.seqs.pop(request_id, None)
        self._early_items.pop(request_id)
        self._ended.add(request_id)
        if seq is not None:
            self.scheduler.remove(seq)

    def _maybe_prepare(self, seq: Sequence) -> None:
        """Build the prompt once every item is here; with ``overlap_encode_prefill``, also each time the
        run of arrived items from the first one grows (the prefix before the first missing item)."""
        if seq.error is not None or seq.complete:
            return
        arrived = 0
        while arrived in seq.items:
            arrived += 1
        total = len(seq.request.items)
        grew = arrived > seq.prepared_items or not seq.prepared
        if arrived < total and not (self.cfg.overlap_encode_prefill and grew):
            return
        try:
            self._prepare(seq, arrived)
        except ValueError as exc:  # a span the prompt does not hold, a bad embedding count
            seq.error = str(exc)
            return
        if seq.complete:
            seq.stamp("embeddings_ready")

    def _prepare(self, seq: Sequence, arrived: int) -> None:
        """Expand placeholders, merge embeddings and compute positions of the prompt (``arrived`` = all
        items) or of its prefix before item ``arrived``. Earlier rows never change: a longer prefix
        extends the previous one, so the KV already computed stays valid."""
        items = [seq.items[i] for i in range(arrived)]  # prompt order
        metas = [meta for meta, _ in items]
        complete = arrived == len(seq.request.items)
        prompt = seq.request.prompt_token_ids
        if not complete:  # cut before the first missing item's placeholder
            refs = seq.request.items
            cut = self.side.placeholder_starts(prompt, [r.modality for r in refs[: arrived + 1]])[arrived]
            prompt = prompt[:cut]
        ids, types = self.side.expand(prompt, metas)
        if complete:
            problem = self._length_error(len(ids), seq.request.sampling.max_tokens, "with its media tokens")
            if problem is not None:
                raise ValueError(problem)
        seq.token_ids = ids.tolist()
        seq.prompt_len = len(seq.token_ids)
        seq.prepared_items = arrived
        if complete:
            seq.items = {}
        if not items:
            return  # text only (so far): embeddings from the table, positions 0..L-1
        positions, seq.rope_delta = self.side.positions(ids, types, metas)
        seq.positions = positions.to(self.device, torch.float32)
        table = self.runner.model.embed_table
        # visual rows take the visual items' embeds and audio rows the audio ones, each in prompt order
        # (a video with its audio track contributes to both)
        visual_rows = torch.nonzero((types == IMAGE) | (types == VIDEO), as_tuple=True)[0]
        audio_rows = torch.nonzero(types == AUDIO, as_tuple=True)[0]
        visual = [t["embeds"] for m, t in items if m.modality != "audio"]
        audio = [
            t["embeds"] if m.modality == "audio" else t["audio_embeds"] for m, t in items if AUDIO in m.token_types
        ]
        mm = [e.to(self.device) for e in visual + audio]
        mm_rows = torch.cat([visual_rows, audio_rows]).to(self.device)
        mm_embeds = torch.cat(mm) if mm else table.new_empty(0, table.shape[1])
        if self.runner.tp.enabled:  # the table is split over ranks: the step looks it up, media rows travel
            seq.mm_rows, seq.mm_embeds = mm_rows, mm_embeds
        else:
            seq.prompt_embeds = merge_embeddings(ids.to(self.device), table, mm_rows, mm_embeds)
        if self.role == "prefill":  # handed to the decode instance with the KV cache
            seq.mm_rows, seq.mm_embeds = mm_rows, mm_embeds
        deep = [t["deepstack"].to(self.device) for _, t in items if "deepstack" in t]
        if deep:  # DeepStack features sit on the visual rows (image and video), in prompt order
            seq.deepstack = (visual_rows.tolist(), torch.cat(deep, dim=1))
        seq.item_spans = _item_spans(prompt, metas, self.side)

    # ---- steps ------------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        outputs = self._fail_errored()
        batch = self.scheduler.schedule()
        outputs += [self._failure(seq, reason) for seq, reason in batch.failed]
        self._load_prefilled(batch.loaded)
        if not batch:
            return outputs
        for seq, _ in batch.prefills:
            if "prefill_start" not in seq.timestamps:
                seq.stamp("prefill_start")
        sampled = ModelRunner.sampled_seqs(batch)  # before the counts below move
        tokens = self.runner.run(batch)
        self.steps += 1
        for seq, n in batch.prefills:
            seq.num_computed += n
        for seq in batch.decodes:
            seq.num_computed += 1
        for seq in [s for s, _ in batch.prefills] + batch.decodes:
            self.blocks.computed(seq)
        outputs += [self._emit(seq, token) for seq, token in zip(sampled, tokens, strict=True)]
        return outputs

    def _fail_errored(self) -> list[RequestOutput]:
        failed = [seq for seq in self.seqs.values() if seq.error is not None]
        return [self._failure(seq, seq.error) for seq in failed]

    def _failure(self, seq: Sequence, reason: str) -> RequestOutput:
        self.scheduler.remove(seq)
        self.seqs.pop(seq.id, None)
        self._ended.add(seq.id)
        return RequestOutput(
            request_id=seq.id, finished=True, finish_reason="error", error=reason, timestamps=seq.timestamps
        )

    def _emit(self, seq: Sequence, token: int) -> RequestOutput:
        first = not seq.output_ids
        seq.output_ids.append(token)
        seq.token_ids.append(token)
        sp = seq.request.sampling
        reason = None
        if not sp.ignore_eos and (token in self.side.eos_token_ids or token in sp.stop_token_ids):
            reason = "stop"
        elif len(seq.output_ids) >= sp.max_tokens:
            reason = "length"
        if first:
            seq.stamp("first_token")
        if reason:
            seq.stamp("finished")
            self.scheduler.remove(seq)
            self.seqs.pop(seq.id, None)
            self._ended.add(seq.id)
        elif first and self.role == "prefill" and seq.request.decode_rank >= 0:
            self.handoffs.append(self._hand_off(seq))
        return RequestOutput(
            request_id=seq.id,
            token_ids=[token],
            offset=len(seq.output_ids) - 1,
            finished=reason is not None,
            finish_reason=reason,
            num_prompt_tokens=seq.prompt_len,
            timestamps=seq.timestamps if (first or reason) else {},
            num_cached_tokens=seq.num_cached_prompt if reason else 0,
            num_preemptions=seq.num_preemptions if reason else 0,
            kv_transfer_bytes=seq.kv_transfer_bytes if reason else 0,
        )

    # ---- prefill / decode split -------------------------------------------------------------------

    def take_handoffs(self) -> list[Handoff]:
        """Requests this prefill instance finished with, to send to their decode instances."""
        out, self.handoffs = self.handoffs, []
        return out

    def _hand_off(self, seq: Sequence) -> Handoff:
        """Copy out ``seq``'s prompt KV and what decode needs, then free it here (its blocks stay in
        this instance's prefix cache)."""
        prompt_len = seq.prompt_len
        tensors = {"kv": self.runner.gather_kv(seq.block_table, prompt_len)}  # [L, 2, blocks, bs, kv_heads, D]
        if seq.positions is not None:
            tensors["positions"] = seq.positions[:, :prompt_len]  # [3, prompt_len]
        if seq.mm_rows is not None and seq.mm_rows.numel():
            tensors["mm_rows"], tensors["mm_embeds"] = seq.mm_rows, seq.mm_embeds
        if seq.deepstack is not None:
            rows, feats = seq.deepstack
            tensors["deepstack_rows"] = torch.tensor(rows, dtype=torch.int64, device=self.device)
            tensors["deepstack"] = feats
        seq.stamp("kv_transfer_start")
        handoff = Handoff(
            request=seq.request,
            token_ids=list(seq.token_ids),
            prompt_len=prompt_len,
            rope_delta=float(seq.rope_delta),
            item_spans=list(seq.item_spans),
            num_cached_tokens=seq.num_cached_prompt,
            num_preemptions=seq.num_preemptions,
            timestamps=dict(seq.timestamps),
            tensors=tensors,
        )
        self.scheduler.remove(seq)
        self.seqs.pop(seq.id, None)
        self._ended.add(seq.id)
        return handoff

    def add_prefilled(self, msg: KvReady, tensors: dict[str, torch.Tensor]) -> None:
        """A prefilled request from a prefill instance: it waits for blocks, gets its KV copied in and
        decodes from its first token on (``Scheduler`` admits it without a prefill)."""
        req = msg.request
        if req.request_id in self.seqs or req.request_id in self._ended:
            return
        seq = Sequence(request=req)
        seq.timestamps.update(msg.timestamps)
        seq.token_ids = list(msg.token_ids)
        seq.prompt_len = msg.prompt_len
        seq.output_ids = seq.token_ids[msg.prompt_len :]
        seq.prepared_items = len(req.items)
        seq.rope_delta = msg.rope_delta
        seq.item_spans = [tuple(span) for span in msg.item_spans]
        seq.num_cached_prompt, seq.num_preemptions = msg.num_cached_tokens, msg.num_preemptions
        seq.positions = tensors.get("positions")
        seq.mm_rows, seq.mm_embeds = tensors.get("mm_rows"), tensors.get("mm_embeds")
        if "deepstack" in tensors:
            seq.deepstack = (tensors["deepstack_rows"].tolist(), tensors["deepstack"])
        kv = tensors["kv"]
        expected = self.runner.kv_block_shape
        if tuple(kv.shape[:2]) + tuple(kv.shape[3:]) != expected or kv.shape[2] * expected[2] < msg.prompt_len:
            seq.error = f"the prefill instance's KV cache {tuple(kv.shape)} does not fit this one's blocks {expected}"
        seq.kv_pending = kv
        seq.kv_transfer_bytes = kv.numel() * kv.element_size()
        seq.stamp("kv_transfer_end")
        self.seqs[req.request_id] = seq
        self.scheduler.add(seq)
        if seq.error is None:
            seq.error = self._length_error(msg.prompt_len, req.sampling.max_tokens, "prefilled")

    def _load_prefilled(self, seqs: list[Sequence]) -> None:
        """Copy each admitted prefilled sequence's received KV into its blocks."""
        for seq in seqs:
            self.runner.write_kv(seq.block_table, seq.kv_pending)
            seq.kv_pending = None
            self.blocks.computed(seq)


_UNHASHED = itertools.count()


@dataclass
class Handoff:
    """A prefilled request leaving this instance: the fields of its ``KvReady`` and its tensors."""

    request: NewRequest
    token_ids: list[int]
    prompt_len: int
    rope_delta: float
    item_spans: list[tuple[int, int, str]]
    num_cached_tokens: int
    num_preemptions: int
    timestamps: dict[str, float]
    tensors: dict[str, torch.Tensor]


def _max_positions(hf_config) -> int | None:
    """The language model's own position limit, read off the (text part of the) HF config."""
    config = hf_config
    for part in ("thinker_config", "text_config"):
        config = getattr(config, part, None) or config
    config = getattr(config, "text_config", None) or config
    return getattr(config, "max_position_embeddings", None)


def _item_spans(prompt_ids: list[int], metas: list[ItemMeta], side: LanguageSide) -> list[tuple[int, int, str]]:
    """(start, end, content hash) of each item's span in the expanded prompt, for the prefix cache.
    An item without a content hash gets a unique key: it can hit only within its own request."""
    starts = side.placeholder_starts(prompt_ids, [m.modality for m in metas])
    spans, offset = [], 0
    for meta, at in zip(metas, starts, strict=True):
        start = at + offset
        key = meta.info.get("content_hash") or f"unhashed-{next(_UNHASHED)}"
        spans.append((start, start + len(meta.token_ids), str(key)))
        offset += len(meta.token_ids) - len(side.placeholder_span(meta.modality))
    return spans
