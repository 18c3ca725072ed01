"""The model runner: owns every device step of the language engine.

It builds the decoder and loads its weights, sizes and allocates the paged KV cache from the
memory left after a warm-up step, turns a scheduled ``Batch`` into the step's tensors (ids,
embeddings, positions, slot mapping, attention metadata; per sequence, never per token), runs the
forward (decode-only steps through CUDA graphs captured for a ladder of batch sizes) and samples.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from epd.language.attention import AttentionMetadata, build_attention
from epd.language.config import EngineConfig
from epd.language.lockstep import CAPTURE, FORWARD, REPLAY, STOP, Lockstep
from epd.language.models import QwenDecoder
from epd.language.models.loader import checkpoint_tensors, init_random, lm_name, load_weights
from epd.language.parallel import TensorParallel, TensorSource
from epd.language.sampler import sample
from epd.language.scheduler import Batch
from epd.language.sequence import Sequence
from epd.models import LanguageSide
from epd_kernels.moe import resolve_kernel

log = logging.getLogger("epd.language")

CPU_KV_TOKENS = 32768
"""KV capacity on CPU when ``engine.kv_tokens`` is unset (CPU runs are tests and tiny models)."""


def _sharded(tensors, shard):
    """In-memory tensors (checkpoint or HF-module names), each cut to this rank's shard."""
    for name, tensor in tensors:
        lm = lm_name(name)
        yield name, tensor if lm is None else shard(lm, TensorSource(tensor))


@dataclass
class StepInputs:
    embeds: torch.Tensor | None  # [N, H] (None until looked up, tensor parallel)
    positions: torch.Tensor  # [3, N] float32
    meta: AttentionMetadata
    deepstack: tuple[torch.Tensor, torch.Tensor] | None
    sample_rows: torch.Tensor | None  # [S] rows whose logits give a token (None: every row)
    sampled: list[Sequence]  # the sequences those rows belong to
    ids: torch.Tensor | None = None  # [N] int64
    media_rows: torch.Tensor | None = None  # [M] rows of the step that take media embeddings
    media_values: torch.Tensor | None = None  # [M, H]


def _step_message(inp: StepInputs) -> tuple[list[int], list[torch.Tensor | None]]:
    """A step as (ints, tensors) for the followers of a tensor-parallel instance (``Lockstep``)."""
    m = inp.meta
    ints = [m.num_prefill_tokens, int(m.prefill_from_start), m.num_decodes, len(m.prefill_q_lens)]
    ints += [*m.prefill_q_lens, *m.prefill_k_lens, *m.decode_context_lens_host]
    deep_rows, deep_feats = inp.deepstack if inp.deepstack is not None else (None, None)
    tensors = [inp.ids, inp.media_rows, inp.media_values, inp.positions, m.slot_mapping, m.cu_seqlens_q]
    tensors += [m.cu_seqlens_k, m.prefill_context_slots, m.decode_block_tables, m.decode_context_lens]
    tensors += [deep_rows, deep_feats, inp.sample_rows]
    return ints, tensors


def _step_inputs(ints: list[int], tensors: list[torch.Tensor | None]) -> StepInputs:
    """The inverse of ``_step_message`` on a follower."""
    num_prefill, from_start, num_decodes, num_seqs = ints[:4]
    q_lens, k_lens = ints[4 : 4 + num_seqs], ints[4 + num_seqs : 4 + 2 * num_seqs]
    ids, rows, values, positions, slots, cu_q, cu_k, ctx, tables, lens, deep_rows, deep_feats, sample = tensors
    meta = AttentionMetadata(
        slot_mapping=slots,
        num_prefill_tokens=num_prefill,
        prefill_q_lens=q_lens,
        prefill_k_lens=k_lens,
        cu_seqlens_q=cu_q,
        cu_seqlens_k=cu_k,
        prefill_context_slots=ctx,
        prefill_from_start=bool(from_start),
        num_decodes=num_decodes,
        decode_block_tables=tables,
        decode_context_lens=lens,
        decode_context_lens_host=ints[4 + 2 * num_seqs :],
    )
    deepstack = (deep_rows, deep_feats) if deep_rows is not None else None
    return StepInputs(None, positions, meta, deepstack, sample, [], ids, rows, values)


class ModelRunner:
    def __init__(
        self,
        side: LanguageSide,
        cfg: EngineConfig,
        device: torch.device,
        dtype: torch.dtype,
        tensors: Iterable[tuple[str, torch.Tensor]] | None = None,
        tp: TensorParallel | None = None,
    ) -> None:
        """``tp``: this rank's place in its instance's tensor-parallel group (the leader runs the engine,
        the followers ``follow``)."""
        self.cfg = cfg
        self.device = device
        self.dtype = dtype
        self.tp = tp or TensorParallel()
        self.lockstep = Lockstep(self.tp, device) if self.tp.enabled else None
        self.vocab_size = side.spec.vocab_size
        spec = self.tp.local_spec(side.spec)
        self.attention = build_attention(cfg.attention, device, spec.head_dim**-0.5, cfg.decode_attention)
        self.model = QwenDecoder(spec, self.attention, device=device, expert_dtype=dtype).to(dtype)
        self.moe_kernel = resolve_kernel(cfg.moe_kernel, device, dtype) if spec.num_experts else None
        self.model.set_moe_kernel(self.moe_kernel)
        shard = (lambda name, source: self.tp.shard(name, source, side.spec)) if self.tp.enabled else None
        if tensors is not None:  # weights handed over in memory (benchmarks: the same weights as an HF model)
            load_weights(self.model, tensors if shard is None else _sharded(tensors, shard))
        elif side.weights is None:
            init_random(self.model)
        else:
            load_weights(self.model, checkpoint_tensors(side.weights, device, shard))
        self.tp.apply(self.model)
        self.model.eval()
        self.block_size = cfg.block_size
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.num_blocks = 0

    # ---- KV cache ---------------------------------------------------------------------------------

    def kv_bytes_per_token(self) -> int:
        spec = self.model.spec
        return 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * self.dtype.itemsize

    def allocate_kv(self) -> int:
        """Size the KV cache (``kv_tokens``, or the memory left after a warm-up step) and bind it; returns blocks."""
        if self.cfg.kv_tokens is not None:
            tokens = self.cfg.kv_tokens
        elif self.device.type == "cuda":
            tokens = self._tokens_that_fit()
        else:
            tokens = CPU_KV_TOKENS
        if self.tp.enabled:  # the instance's ranks hold the same blocks: as many as the fullest rank has room for
            count = torch.tensor([tokens], dtype=torch.int64)
            dist.all_reduce(count, op=dist.ReduceOp.MIN, group=self.tp.meta_group)
            tokens = int(count.item())
        num_blocks = max(2, tokens // self.block_size + 1)  # + block 0, the padding block
        spec = self.model.spec
        shape = (spec.num_layers, 2, num_blocks, self.block_size, spec.num_kv_heads, spec.head_dim)
        self.kv_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.attention.bind(self.kv_cache)
        self.num_blocks = num_blocks
        log.info(
            "KV cache: %d blocks of %d = %d tokens", num_blocks - 1, self.block_size, (num_blocks - 1) * self.block_size
        )
        return num_blocks

    def _tokens_that_fit(self) -> int:
        """Run one prefill at the full token budget on a scratch cache, then fill ``kv_fraction`` of the device."""
        n = self.cfg.max_batch_tokens
        scratch = -(-n // self.block_size) + 1
        spec = self.model.spec
        shape = (spec.num_layers, 2, scratch, self.block_size, spec.num_kv_heads, spec.head_dim)
        self.attention.bind(torch.zeros(shape, dtype=self.dtype, device=self.device))
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        slots = torch.arange(self.block_size, self.block_size + n, device=self.device)
        meta = self._prefill_only_meta([n], [n], slots)
        with torch.inference_mode():
            ids = torch.randint(0, spec.vocab_size, (n,), device=self.device)
            hidden = self.model(
                self.model.embed_tokens(ids), torch.arange(n, device=self.device).float().expand(3, -1), meta
            )
            self._logits(hidden[-1:])
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        scratch_bytes = self.attention.kv_cache.numel() * self.dtype.itemsize
        del self.attention.kv_cache
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(self.device)
        own = torch.cuda.memory_allocated(self.device)  # weights and buffers
        activations = peak - scratch_bytes - own  # transient memory of a full-budget step
        # our share of the device, and never more than is free now: other ranks (encoders of a
        # topology whose instances share this GPU) may hold memory too
        free_for_kv = min(total * self.cfg.kv_fraction - own, free - total * (1 - self.cfg.kv_fraction)) - activations
        if free_for_kv < self.block_size * self.kv_bytes_per_token():
            raise ValueError(
                f"no memory left for the KV cache: the weights and a {n}-token step take {peak / 2**30:.1f} GiB "
                f"of {total / 2**30:.1f} GiB; lower engine.max_batch_tokens or raise engine.kv_fraction"
            )
        useful = self.cfg.max_num_seqs * self.cfg.max_model_len  # more could never be filled
        return int(min(free_for_kv // self.kv_bytes_per_token(), useful))

    def _prefill_only_meta(self, q_lens: list[int], k_lens: list[int], slots: torch.Tensor) -> AttentionMetadata:
        cu_q = torch.tensor([0, *np.cumsum(q_lens)], dtype=torch.int32, device=self.device)
        return AttentionMetadata(
            slot_mapping=slots,
            num_prefill_tokens=sum(q_lens),
            prefill_q_lens=q_lens,
            prefill_k_lens=k_lens,
            cu_seqlens_q=cu_q,
            cu_seqlens_k=cu_q,
            prefill_context_slots=slots,
            prefill_from_start=True,
        )

    # ---- KV cache of whole requests (prefill → decode) ---------------------------------------------

    @property
    def kv_block_shape(self) -> tuple[int, ...]:
        """(layers, 2, block_size, kv_heads, head_dim): the cache's shape without its block axis."""
        shape = self.kv_cache.shape
        return (shape[0], shape[1], *shape[3:])

    def gather_kv(self, block_table: list[int], num_tokens: int) -> torch.Tensor:
        """A copy of the blocks holding the first ``num_tokens`` tokens: [L, 2, blocks, bs, kv_heads, D].
        Queued on the current stream, so the blocks may be reused by any later step."""
        num_blocks = -(-num_tokens // self.block_size)
        index = torch.tensor(block_table[:num_blocks], dtype=torch.int64, device=self.device)
        return self.kv_cache.index_select(2, index)

    def write_kv(self, block_table: list[int], kv: torch.Tensor) -> None:
        """Copy ``kv`` [L, 2, blocks, bs, kv_heads, D] into the first blocks of ``block_table``."""
        index = torch.tensor(block_table[: kv.shape[2]], dtype=torch.int64, device=self.device)
        self.kv_cache.index_copy_(2, index, kv.to(self.kv_cache.device, self.kv_cache.dtype))

    # ---- one step ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def run(self, batch: Batch) -> list[int]:
        """Run ``batch`` and return one sampled token per sequence that completed its input this step
        (in ``sampled_seqs(batch)`` order)."""
        sampled = self.sampled_seqs(batch)
        if not batch.prefills and self._graph_size(batch.decodes):
            logits, greedy = self._replay(batch.decodes)
            return self._sample(logits, sampled, greedy)
        inp = self._prepare(batch)
        if len(sampled) == inp.ids.shape[0]:  # decodes only: no gather
            inp.sample_rows = None
        if self.lockstep is not None:
            self.lockstep.send(FORWARD, *_step_message(inp))
            inp.embeds = self._embed(inp.ids, inp.media_rows, inp.media_values)
        hidden = self.model(inp.embeds, inp.positions, inp.meta, inp.deepstack, inp.sample_rows)
        logits = self._logits(hidden)
        return self._sample(logits, sampled) if sampled else []

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[S, V] float32 logits of ``hidden`` (gathered over the vocab shards of a tensor-parallel instance)."""
        return self.tp.logits(self.model.logits(hidden), self.vocab_size)

    def _embed(self, ids: torch.Tensor, rows: torch.Tensor | None, values: torch.Tensor | None) -> torch.Tensor:
        """The step's input embeddings: the table's rows for ``ids``, media ``values`` at ``rows``."""
        embeds = self.model.embed_tokens(ids)  # [N, H]
        if rows is not None and rows.numel():
            embeds[rows] = values.to(embeds.dtype)
        return embeds

    # ---- followers of a tensor-parallel instance ---------------------------------------------------

    @torch.inference_mode()
    def follow(self) -> None:
        """A follower's loop: run each step the leader broadcasts, on this rank's shard, until it says stop."""
        while True:
            op, ints, tensors = self.lockstep.recv()
            if op == STOP:
                return
            if op == CAPTURE:
                self.capture_graphs()
            elif op == REPLAY:
                bs, width = ints
                g_in, tables = tensors
                self.g_in.copy_(g_in)
                self.g_tables[:bs, :width].copy_(tables)
                self.graphs[bs].replay()
            elif op == FORWARD:
                inp = _step_inputs(ints, tensors)
                embeds = self._embed(inp.ids, inp.media_rows, inp.media_values)
                self._logits(self.model(embeds, inp.positions, inp.meta, inp.deepstack, inp.sample_rows))

    def stop_followers(self) -> None:
        if self.lockstep is not None:
            self.lockstep.send(STOP, [], [])

    @staticmethod
    def sampled_seqs(batch: Batch) -> list[Sequence]:
        done = [seq for seq, n in batch.prefills if seq.complete and seq.num_computed + n == seq.num_tokens]
        return done + batch.decodes

    def _prepare(self, batch: Batch) -> StepInputs:
        ids: list[int] = []
        slots: list[torch.Tensor] = []
        positions: list[torch.Tensor] = []
        media: list[tuple[int, torch.Tensor]] = []  # (first row, rows of prompt_embeds)
        sparse: list[tuple[torch.Tensor, torch.Tensor]] = []  # (rows of the step, their media embeddings)
        deep_rows, deep_feats = [], []
        q_lens, k_lens, ctx_slots, sample_rows = [], [], [], []
        from_start = True
        row = 0
        for seq, n in batch.prefills:
            start, end = seq.num_computed, seq.num_computed + n
            ids += seq.token_ids[start:end]
            positions.append(self._positions(seq, start, end))
            table = torch.tensor(seq.block_table, dtype=torch.int64)
            ctx = torch.arange(end)
            ctx_slot = table[ctx // self.block_size] * self.block_size + ctx % self.block_size
            slots.append(ctx_slot[start:])
            ctx_slots.append(ctx_slot)
            from_start &= start == 0
            if seq.prompt_embeds is not None and start < seq.prompt_len:
                media.append((row, seq.prompt_embeds[start : min(end, seq.prompt_len)]))
            elif seq.mm_rows is not None and start < seq.prompt_len:  # only the media rows are kept
                inside = (seq.mm_rows >= start) & (seq.mm_rows < end)
                sparse.append((seq.mm_rows[inside] - start + row, seq.mm_embeds[inside]))
            if seq.deepstack is not None and start < seq.prompt_len:
                rows_host, feats = seq.deepstack
                lo, hi = bisect.bisect_left(rows_host, start), bisect.bisect_left(rows_host, end)
                if hi > lo:
                    deep_rows.append(torch.tensor(rows_host[lo:hi]) - start + row)
                    deep_feats.append(feats[:, lo:hi])
            q_lens.append(n)
            k_lens.append(end)
            row += n
            if seq.complete and end == seq.num_tokens:
                sample_rows.append(row - 1)
        decode_ids, decode_slots, decode_pos, lens = self._decode_rows(batch.decodes)
        ids += decode_ids
        sample_rows += range(row, row + len(lens))
        dev = self.device
        ids_t = torch.tensor(ids, dtype=torch.int64, device=dev)
        if self.tp.enabled:  # every rank looks up its vocabulary shard together: only ids and media travel
            sparse += [(torch.arange(first, first + r.shape[0], device=dev), r) for first, r in media]
            media = []
        media_rows = torch.cat([r for r, _ in sparse]) if sparse else None
        media_values = torch.cat([v for _, v in sparse]) if sparse else None
        embeds = None
        if not self.tp.enabled:
            embeds = self.model.embed_tokens(ids_t)
            for first, rows in media:  # the merged prompt rows (text and media) replace the table rows
                embeds[first : first + rows.shape[0]] = rows
            if media_rows is not None:
                embeds[media_rows] = media_values.to(embeds.dtype)
        if decode_pos:
            positions.append(torch.tensor(decode_pos, dtype=torch.float32, device=dev).expand(3, -1))
        meta = AttentionMetadata(
            slot_mapping=torch.cat([*slots, torch.tensor(decode_slots, dtype=torch.int64)]).to(dev),
            num_prefill_tokens=sum(q_lens),
            prefill_q_lens=q_lens,
            prefill_k_lens=k_lens,
            prefill_from_start=from_start,
        )
        if q_lens:
            meta.cu_seqlens_q = torch.tensor([0, *np.cumsum(q_lens)], dtype=torch.int32, device=dev)
            meta.cu_seqlens_k = torch.tensor([0, *np.cumsum(k_lens)], dtype=torch.int32, device=dev)
            meta.prefill_context_slots = torch.cat(ctx_slots).to(dev)
        if lens:
            meta.num_decodes = len(lens)
            meta.decode_block_tables = self._tables(batch.decodes, max(-(-n // self.block_size) for n in lens))
            meta.decode_context_lens = torch.tensor(lens, dtype=torch.int32, device=dev)
            meta.decode_context_lens_host = lens
        deepstack = None
        if deep_rows:
            deepstack = (torch.cat(deep_rows).to(dev), torch.cat(deep_feats, dim=1))
        return StepInputs(
            embeds=embeds,
            positions=torch.cat(positions, dim=1),
            meta=meta,
            deepstack=deepstack,
            sample_rows=torch.tensor(sample_rows, dtype=torch.int64, device=dev),
            sampled=self.sampled_seqs(batch),
            ids=ids_t,
            media_rows=media_rows,
            media_values=media_values,
        )

    def _decode_rows(self, decodes: list[Sequence]) -> tuple[list[int], list[int], list[float], list[int]]:
        """Per decoding sequence: the token fed (its last), its cache slot, its rope position, its context length."""
        ids, slots, positions, lens = [], [], [], []
        for seq in decodes:
            last = seq.num_tokens - 1
            ids.append(seq.token_ids[last])
            slots.append(seq.block_table[last // self.block_size] * self.block_size + last % self.block_size)
            positions.append(last + seq.rope_delta)
            lens.append(last + 1)
        return ids, slots, positions, lens

    def _positions(self, seq: Sequence, start: int, end: int) -> torch.Tensor:
        """[3, end - start] rope positions: the prompt's own, then index + rope_delta for generated tokens."""
        parts = []
        if seq.positions is not None and start < seq.prompt_len:
            parts.append(seq.positions[:, start : min(end, seq.prompt_len)])
            start = min(end, seq.prompt_len)
        if end > start:
            delta = seq.rope_delta if seq.positions is not None else 0.0
            parts.append((torch.arange(start, end, device=self.device, dtype=torch.float32) + delta).expand(3, -1))
        return torch.cat(parts, dim=1)

    def _tables(self, seqs: list[Sequence], width: int) -> torch.Tensor:
        tables = np.zeros((len(seqs), width), dtype=np.int32)
        self._fill_tables(tables, seqs)
        return torch.from_numpy(tables).to(self.device)

    @staticmethod
    def _fill_tables(out: np.ndarray, seqs: list[Sequence]) -> None:
        """Row i of ``out`` [>= len(seqs), W] gets sequence i's block table (its first W blocks)."""
        width = out.shape[1]
        for i, seq in enumerate(seqs):
            n = min(width, len(seq.block_table))
            out[i, :n] = seq.block_table[:n]

    # ---- sampling ---------------------------------------------------------------------------------

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence], greedy: torch.Tensor | None = None) -> list[int]:
        """One token per row of ``logits``; ``greedy``: the rows' argmax, already computed (in a graph)."""
        params = [seq.request.sampling for seq in seqs]
        any_random = any(p.temperature > 0 for p in params)
        if not any_random:
            return (greedy if greedy is not None else logits.argmax(-1)).tolist()
        dev = self.device
        any_filter = any(p.top_k > 0 or p.top_p < 1 for p in params)
        tokens = sample(
            logits,
            torch.tensor([p.temperature for p in params], dtype=torch.float32, device=dev),
            torch.tensor([p.top_k for p in params], dtype=torch.int64, device=dev),
            torch.tensor([p.top_p for p in params], dtype=torch.float32, device=dev),
            torch.tensor([p.seed or 0 for p in params], dtype=torch.int64, device=dev),
            torch.tensor([len(seq.output_ids) for seq in seqs], dtype=torch.int64, device=dev),
            any_random,
            any_filter,
        )
        return tokens.tolist()

    # ---- CUDA graphs ------------------------------------------------------------------------------

    def capture_graphs(self) -> None:
        """Capture decode steps for ``graph_batch_sizes`` (up to ``max_num_seqs``); GPU and cuda attention only."""
        if not (self.cfg.cuda_graphs and self.device.type == "cuda" and self.attention.supports_graphs):
            return
        if self.lockstep is not None and self.tp.rank == 0:
            self.lockstep.send(CAPTURE, [], [])
        sizes = sorted({b for b in self.cfg.graph_batch_sizes if b <= self.cfg.max_num_seqs})
        if self.model.spec.num_experts and self.moe_kernel == "reference":  # the loop reads counts on the host
            log.warning("engine.moe_kernel=reference runs the experts eagerly: no decode CUDA graphs")
            return
        if not sizes:
            return
        top, dev = sizes[-1], self.device
        width = -(-self.cfg.max_model_len // self.block_size)
        # the graphs' inputs: one byte buffer, filled from a pinned host twin by one copy per step,
        # viewed as ids and slots (int64), context lengths (int32) and rope positions (float32)
        nbytes = top * (8 + 8 + 4 + 4)
        self.g_in = torch.zeros(nbytes, dtype=torch.uint8, device=dev)
        self.h_in = torch.zeros(nbytes, dtype=torch.uint8).pin_memory()
        self.g_ids, self.g_slots, self.g_lens, self.g_pos = self._input_views(self.g_in, top)
        self.h_views = [t.numpy() for t in self._input_views(self.h_in, top)]
        self.g_tables = torch.zeros(top, width, dtype=torch.int32, device=dev)
        self.h_tables = torch.zeros(top, width, dtype=torch.int32).pin_memory()
        self.h_tables_np = self.h_tables.numpy()  # the same pinned memory, filled per step
        self.g_logits = torch.zeros(top, self.vocab_size, dtype=torch.float32, device=dev)
        self.g_tokens = torch.zeros(top, dtype=torch.int64, device=dev)
        pool = torch.cuda.graph_pool_handle()
        for bs in reversed(sizes):  # largest first: the smaller graphs reuse its memory pool
            self.g_lens[:bs] = 1  # padding rows: one cached token (block 0, never read back)
            meta = AttentionMetadata(
                slot_mapping=self.g_slots[:bs],
                num_decodes=bs,
                decode_block_tables=self.g_tables[:bs],
                decode_context_lens=self.g_lens[:bs],
            )
            with torch.inference_mode():
                self._graph_body(bs, meta)  # warm-up run outside the capture
                torch.cuda.synchronize(dev)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self._graph_body(bs, meta)
            self.graphs[bs] = graph
        torch.cuda.synchronize(dev)
        log.info("captured decode CUDA graphs for batch sizes %s", sizes)

    @staticmethod
    def _input_views(buf: torch.Tensor, top: int) -> tuple[torch.Tensor, ...]:
        """ids, slots [top] int64, context lengths [top] int32, positions [top] float32 inside ``buf``."""
        ids = buf[: 8 * top].view(torch.int64)
        slots = buf[8 * top : 16 * top].view(torch.int64)
        lens = buf[16 * top : 20 * top].view(torch.int32)
        pos = buf[20 * top :].view(torch.float32)
        return ids, slots, lens, pos

    def _graph_body(self, bs: int, meta: AttentionMetadata) -> None:
        positions = self.g_pos[:bs].expand(3, -1)
        hidden = self.model(self.model.embed_tokens(self.g_ids[:bs]), positions, meta)
        self.g_logits[:bs] = self._logits(hidden)
        self.g_tokens[:bs] = self.g_logits[:bs].argmax(-1)  # greedy tokens, read when no row samples

    def _graph_size(self, decodes: list[Sequence]) -> int:
        """Smallest captured batch size that holds ``decodes`` (0 = run eagerly)."""
        if not self.graphs or not decodes:
            return 0
        width = self.g_tables.shape[1]
        if any(len(seq.block_table) > width for seq in decodes):
            return 0
        return next((bs for bs in sorted(self.graphs) if bs >= len(decodes)), 0)

    def _replay(self, decodes: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the captured graph for ``decodes``: (logits, greedy tokens), one row per sequence.

        The step's inputs go over in two copies (the packed per-row values, the block tables' used
        columns) from pinned buffers that the previous step's token read has already released.
        Padding rows keep slot 0 and length 1 and an all-zero table row: they write block 0 only.
        """
        bs, n = self._graph_size(decodes), len(decodes)
        ids, slots, pos, lens = self._decode_rows(decodes)
        h_ids, h_slots, h_lens, h_pos = self.h_views
        h_ids[:n], h_slots[:n], h_lens[:n], h_pos[:n] = ids, slots, lens, pos
        h_ids[n:bs], h_slots[n:bs], h_lens[n:bs], h_pos[n:bs] = 0, 0, 1, 0
        width = max(len(seq.block_table) for seq in decodes)
        self._fill_tables(self.h_tables_np, decodes)
        self.h_tables_np[n:bs, :width] = 0
        self.g_in.copy_(self.h_in, non_blocking=True)
        self.g_tables[:bs, :width].copy_(self.h_tables[:bs, :width], non_blocking=True)
        if self.lockstep is not None:
            self.lockstep.send(REPLAY, [bs, width], [self.g_in, self.g_tables[:bs, :width]])
        self.graphs[bs].replay()
        return self.g_logits[:n], self.g_tokens[:n]
