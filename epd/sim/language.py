"""A language (prefill, decode or colocated) instance in simulation: epd's own scheduler, block
manager and sequences, with the engine's bookkeeping around them and steps timed by the profile.

``SimEngine`` mirrors ``epd.language.engine.LanguageEngine`` line for line where it touches
scheduling state (request and item arrival, the prompt's expansion and its item spans for the
prefix cache, encode–prefill overlap, failures, token emission), and leaves out what only feeds the
model (embedding merge, rope positions, DeepStack rows): the model runner is replaced by the cost
model. Every scheduling decision (admission order, chunked prefill under the token budget,
preemption, prefix-cache matches and evictions) is ``Scheduler.schedule`` and ``BlockManager``'s.

Prefill and decode instances add the hand-off of ``LanguageEngine``: a prefill instance stops a
request after its first token and frees its blocks (they stay in its prefix cache); the decode
instance the frontend chose receives the KV cache and adds the request to its scheduler, which
admits it (``kv_pending``) when it has blocks for it; it then decodes from its first token on.

``epd.sim.decode_run`` is the one shortcut: runs of pure decode steps of the same batch as one event.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from epd.language.block_manager import BlockManager
from epd.language.config import EngineConfig
from epd.language.runner import ModelRunner
from epd.language.scheduler import Scheduler
from epd.language.sequence import Sequence
from epd.models import ItemMeta, LanguageSide
from epd.protocol import NewRequest, RequestOutput
from epd.sim.costs import CostModel
from epd.sim.events import Device, EventLoop

_UNHASHED = itertools.count()


class SimSide(LanguageSide):
    """The family's placeholder spans (from the profile), for ``placeholder_starts``."""

    def __init__(self, placeholders: dict[str, list[int]]) -> None:
        self.spans = placeholders
        self.eos_token_ids = []

    def placeholder_span(self, modality: str) -> list[int]:
        return self.spans[modality]

    def positions(self, ids, types, items):  # pragma: no cover - the simulator computes no positions
        raise NotImplementedError


class SimEngine:
    """One language-side instance (see the module docstring)."""

    def __init__(
        self,
        loop: EventLoop,
        cfg: EngineConfig,
        costs: CostModel,
        device: Device,
        side: SimSide,
        capacity_tokens: int,
        tp: int = 1,
        role: str = "language",
    ) -> None:
        self.loop = loop
        self.cfg = cfg
        self.costs = costs
        self.device = device
        self.side = side
        self.tp = tp
        self.role = role
        num_blocks = max(2, capacity_tokens // cfg.block_size + 1)  # + block 0, as the runner allocates
        self.blocks = BlockManager(num_blocks, cfg.block_size, cfg.prefix_cache)
        self.scheduler = Scheduler(cfg, self.blocks)
        self.seqs: dict[str, Sequence] = {}
        self._early_items: dict[str, list[tuple]] = {}
        self._failed: set[str] = set()
        self._errored: dict[str, None] = {}  # requests with an error, not yet failed (only add_item sets one)
        self.on_hand_off: Callable[[Sequence], None] | None = None  # prefill: where the KV cache goes
        self.steps = 0
        self.busy_s = 0.0
        self.owner: object = self
        """Who runs the steps on the device (the rank's process: ``Device`` contention)."""
        self.stalled = False
        """The last step found work it could not run (waiting for blocks that a message will free)."""

    @property
    def has_work(self) -> bool:
        return bool(self._errored) or self.scheduler.has_work

    # ---- arrivals (LanguageEngine.add_request / add_item / abort) ------------------------------------

    def add_request(self, req: NewRequest) -> None:
        seq = Sequence(request=req)
        seq.stamp("language_arrival")
        self.seqs[req.request_id] = seq
        self.scheduler.add(seq)
        for args in self._early_items.pop(req.request_id, []):
            self.add_item(*args)
        self._maybe_prepare(seq)

    def add_item(self, request_id: str, index: int, meta: ItemMeta | None, tensors, error: str | None,
                 timestamps: dict[str, float]) -> None:  # fmt: skip
        seq = self.seqs.get(request_id)
        if seq is None:
            if request_id not in self._failed:
                self._early_items.setdefault(request_id, []).append(
                    (request_id, index, meta, tensors, error, timestamps)
                )
            return
        seq.merge_item_timestamps(timestamps)
        if error is not None:
            seq.error = seq.error or f"media item {index}: {error}"
            self._errored[request_id] = None
        elif meta is not None and tensors is not None:
            seq.items[index] = (meta, tensors)
        self._maybe_prepare(seq)

    def abort(self, request_id: str) -> None:
        seq = self.seqs.pop(request_id, None)
        if seq is not None:
            self.scheduler.remove(seq)
            self._failed.add(request_id)

    def _maybe_prepare(self, seq: Sequence) -> None:
        if seq.error is not None or seq.complete:
            return
        arrived = 0
        while arrived in seq.items:
            arrived += 1
        total = len(seq.request.items)
        grew = arrived > seq.prepared_items or not seq.prepared
        if arrived < total and not (self.cfg.overlap_encode_prefill and grew):
            return
        self._prepare(seq, arrived)
        if seq.complete:
            seq.stamp("embeddings_ready")

    def _prepare(self, seq: Sequence, arrived: int) -> None:
        """The expanded prompt (or its prefix before item ``arrived``) and its items' spans."""
        metas = [seq.items[i][0] for i in range(arrived)]
        complete = arrived == len(seq.request.items)
        prompt = seq.request.prompt_token_ids
        refs = seq.request.items
        starts = self.side.placeholder_starts(prompt, [r.modality for r in refs[: arrived + (not complete)]])
        if not complete:
            prompt = prompt[: starts[arrived]]
        ids: list[int] = []
        spans: list[tuple[int, int, str]] = []
        pos = 0
        for meta, at in zip(metas, starts, strict=False):
            ids += prompt[pos:at]
            key = meta.info.get("content_hash") or f"unhashed-{next(_UNHASHED)}"
            spans.append((len(ids), len(ids) + len(meta.token_ids), str(key)))
            ids += meta.token_ids
            pos = at + len(self.side.placeholder_span(meta.modality))
        ids += prompt[pos:]
        seq.token_ids = ids
        seq.prompt_len = len(ids)
        seq.prepared_items = arrived
        if complete:
            seq.items = {}
        seq.item_spans = spans
        if metas:  # text-only prompts skip positions and the merge
            self._work(self.costs.prepare_s(len(ids)))

    # ---- steps (LanguageEngine.step) ------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        outputs = self._fail_errored()
        batch = self.scheduler.schedule()
        outputs += [self._failure(seq, reason) for seq, reason in batch.failed]
        # nothing to run and nothing failed: only a message (blocks released, an item) changes that; the
        # real loop polls its inbox meanwhile, the rank waits for the next message
        self.stalled = not batch and not outputs and not batch.preempted
        if not batch:
            return outputs
        for seq in batch.loaded:  # LanguageEngine._load_prefilled: the KV copied into its blocks
            seq.kv_pending = None
            self.blocks.computed(seq)
        for seq, _ in batch.prefills:
            if "prefill_start" not in seq.timestamps:
                seq.stamp("prefill_start")
        sampled = ModelRunner.sampled_seqs(batch)
        work = self.costs.step_s(
            [(n, seq.num_computed) for seq, n in batch.prefills],
            len(batch.decodes),
            sum(seq.num_computed for seq in batch.decodes),
            self.tp,
        )
        self._work(work)
        self.steps += 1
        for seq, n in batch.prefills:
            seq.num_computed += n
        for seq in batch.decodes:
            seq.num_computed += 1
        for seq in [s for s, _ in batch.prefills] + batch.decodes:
            self.blocks.computed(seq)
        outputs += [self._emit(seq, 0) for seq in sampled]
        return outputs

    def _work(self, seconds: float) -> None:
        self.busy_s += seconds
        self.loop.advance(self.device.run(self.loop.now, seconds, self.owner))

    def _fail_errored(self) -> list[RequestOutput]:
        failed = [self.seqs[rid] for rid in self._errored if rid in self.seqs]
        self._errored.clear()
        return [self._failure(seq, seq.error) for seq in failed]

    def _failure(self, seq: Sequence, reason: str) -> RequestOutput:
        self.scheduler.remove(seq)
        self.seqs.pop(seq.id, None)
        self._failed.add(seq.id)
        return RequestOutput(
            request_id=seq.id, finished=True, finish_reason="error", error=reason, timestamps=seq.timestamps
        )

    def _emit(self, seq: Sequence, token: int) -> RequestOutput:
        first = not seq.output_ids
        seq.output_ids.append(token)
        seq.token_ids.append(token)
        sp = seq.request.sampling
        reason = "length" if len(seq.output_ids) >= sp.max_tokens else None  # no EOS: output lengths are fixed
        if first:
            seq.stamp("first_token")
        if reason:
            seq.stamp("finished")
            self.scheduler.remove(seq)
            self.seqs.pop(seq.id, None)
        elif first and self.role == "prefill":
            self._hand_off(seq)
        return RequestOutput(
            request_id=seq.id,
            token_ids=[token],
            finished=reason is not None,
            finish_reason=reason,
            num_prompt_tokens=seq.prompt_len,
            timestamps=seq.timestamps if (first or reason) else {},
            num_cached_tokens=seq.num_cached_prompt if reason else 0,
            num_preemptions=seq.num_preemptions if reason else 0,
            kv_transfer_bytes=seq.kv_transfer_bytes if reason else 0,
        )

    # ---- prefill / decode hand-off ----------------------------------------------------------------------

    def _hand_off(self, seq: Sequence) -> None:
        """Prefill side (``LanguageEngine._hand_off``): the first token is out; the sequence leaves and
        its blocks are freed (they stay in the prefix cache) once its KV cache is copied out."""
        self.scheduler.remove(seq)
        self.seqs.pop(seq.id, None)
        if self.on_hand_off is not None:
            self.on_hand_off(seq)

    def add_prefilled(self, seq: Sequence) -> None:
        """Decode side (``LanguageEngine.add_prefilled``): the KV cache is here; the scheduler admits the
        sequence when it has blocks for it and it decodes from its first token on."""
        seq.kv_pending = True  # the received KV cache (the simulator holds no tensors)
        seq.stamp("kv_transfer_end")
        self.seqs[seq.id] = seq
        self.scheduler.add(seq)
