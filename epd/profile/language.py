"""The language engine's part of a profile: prefill and decode steps of epd's own engine.

Text-only requests with random token ids go through ``LanguageEngine`` (the real scheduler, block
manager, runner and kernels of this device); each point is the time of ``engine.step()``:

- prefill of n tokens from an empty context (a fresh prompt, ``max_tokens=1``);
- prefill of n tokens after c cached ones (a prompt whose first c tokens repeat a finished one:
  a prefix-cache hit), which gives the attention term;
- decode steps of B sequences of c tokens each (after their prefill);
- a few steps mixing a prefill chunk with decodes, to check the model that adds the two.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import torch

from epd.language import EngineConfig, LanguageEngine
from epd.language.runner import CPU_KV_TOKENS
from epd.models import EncodedItem, LanguageSide
from epd.profile.config import ProfileOptions
from epd.profile.fit import fit_linear, fit_piecewise, intercept, piecewise
from epd.profile.timing import sync, timed, typical
from epd.protocol import ItemRef, NewRequest, SamplingParams

_IDS = itertools.count()


class EngineProbe:
    """Drives a ``LanguageEngine`` with random text-only requests and times its steps."""

    def __init__(self, engine: LanguageEngine, vocab: int, device: torch.device) -> None:
        self.engine = engine
        self.vocab = vocab
        self.device = device
        self.rng = np.random.default_rng(0)

    def ids(self, n: int) -> list[int]:
        return self.rng.integers(100, self.vocab - 100, size=n).tolist()

    def add(self, ids: list[int], max_tokens: int) -> str:
        rid = f"profile-{next(_IDS)}"
        sampling = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
        self.engine.add_request(NewRequest(request_id=rid, prompt_token_ids=ids, items=[], sampling=sampling))
        return rid

    def step(self) -> float:
        seconds, _ = timed(self.engine.step, self.device)
        return seconds

    def drain(self) -> None:
        while self.engine.has_work:
            self.engine.step()
        sync(self.device)

    def prefill(self, n: int, context: int, repeats: int) -> float:
        """Median seconds of the step that prefills ``n`` tokens after ``context`` cached ones."""
        times = []
        for _ in range(repeats + 1):
            prefix = self.ids(context)
            if context:
                self.add(prefix, 1)
                self.drain()
            self.add(prefix + self.ids(n), 1)
            times.append(self.step())
            self.drain()
        return typical(times[1:])

    def decode(self, batch: int, context: int, repeats: int, prefill_tokens: int = 0) -> float:
        """Median seconds of a decode step of ``batch`` sequences of ``context`` tokens (with a prefill
        chunk of ``prefill_tokens`` joining each timed step when > 0)."""
        rids = [self.add(self.ids(context), repeats + 4) for _ in range(batch)]
        seqs = [self.engine.seqs[r] for r in rids]
        while not all(s.output_ids for s in seqs):
            self.engine.step()
        self.step()  # one untimed decode step
        times = []
        for _ in range(repeats):
            if prefill_tokens:
                self.add(self.ids(prefill_tokens), 1)
            times.append(self.step())
        for rid in rids:
            self.engine.abort(rid)
        self.drain()
        return typical(times)


def measure_prepare(probe: EngineProbe, sample: EncodedItem, prompt: dict, repeats: int) -> dict:
    """Seconds from a request's last item arriving to its prompt being ready (``LanguageEngine.add_item``:
    expansion, rope positions, embedding merge), for 1, 2 and 4 items, vs the expanded prompt's tokens."""
    engine, modality = probe.engine, sample.meta.modality
    points = []
    for count in (1, 2, 4):
        ids = prompt["prefix_ids"] + prompt["placeholder_ids"][modality] * count + probe.ids(32) + prompt["suffix_ids"]
        times, length = [], 0
        for _ in range(repeats + 1):
            rid = f"profile-{next(_IDS)}"
            refs = [ItemRef(index=i, modality=modality, encoder_rank=0) for i in range(count)]
            engine.add_request(NewRequest(request_id=rid, prompt_token_ids=ids, items=refs,
                                          sampling=SamplingParams(max_tokens=1, ignore_eos=True)))  # fmt: skip
            for i in range(count - 1):
                engine.add_item(rid, i, sample.meta, sample.tensors, None, {})
            seconds, _ = timed(
                lambda r=rid, last=count - 1: engine.add_item(r, last, sample.meta, sample.tensors, None, {}),
                probe.device,
            )
            times.append(seconds)
            length = engine.seqs[rid].prompt_len
            engine.abort(rid)
        points.append([length, typical(times[1:])])
    return {"points": points, "fit": fit_linear([p[0] for p in points], [p[1] for p in points])}


def measure_language(side: LanguageSide, cfg: EngineConfig, device: torch.device, dtype: torch.dtype,
                     opts: ProfileOptions, sample: EncodedItem | None = None, prompt: dict | None = None) -> dict:  # fmt: skip
    """The ``language`` section of a profile (``epd.profile.schema``)."""
    ctx_lo, ctx_hi = opts.decode_context[0], opts.decode_context[-1]
    slope_batch = opts.decode_batches[len(opts.decode_batches) // 2]
    need = max(max(opts.decode_batches) * (ctx_lo + opts.repeats + 8), slope_batch * (ctx_hi + opts.repeats + 8),
               2 * (opts.prefill_context + max(opts.prefill_tokens)))  # fmt: skip
    budget = max(cfg.max_batch_tokens, max(opts.prefill_tokens) + max(opts.decode_batches))
    run_kv = cfg.kv_tokens if cfg.kv_tokens is not None else (CPU_KV_TOKENS if device.type == "cpu" else None)
    probe_kv = max(need, run_kv) if device.type == "cpu" else cfg.kv_tokens
    probe_cfg = dataclasses.replace(
        cfg, max_batch_tokens=budget, max_num_seqs=max(cfg.max_num_seqs, max(opts.decode_batches) + 1),
        kv_tokens=probe_kv, prefix_cache=True,
    )  # fmt: skip
    engine = LanguageEngine(side, probe_cfg, device, dtype)
    engine.warm_up()
    probe = EngineProbe(engine, side.spec.vocab_size, device)
    prefill = [[n, 0, probe.prefill(n, 0, opts.repeats)] for n in opts.prefill_tokens]
    mid = opts.prefill_tokens[len(opts.prefill_tokens) // 2]
    context = opts.prefill_context - opts.prefill_context % cfg.block_size
    for ctx in (context // 2 - context // 2 % cfg.block_size, context):
        prefill.append([mid, ctx, probe.prefill(mid, ctx, opts.repeats)])
    decode = [[b, ctx_lo, probe.decode(b, ctx_lo, opts.repeats)] for b in opts.decode_batches]
    decode.append([slope_batch, ctx_hi, probe.decode(slope_batch, ctx_hi, opts.repeats)])
    prefill_fit, decode_fit = fit_prefill(prefill), fit_decode(decode)
    mixed = []
    for b in opts.decode_batches[1:3]:
        measured = probe.decode(b, ctx_lo, opts.repeats, prefill_tokens=mid)
        mixed.append({"prefill_tokens": mid, "decode_batch": b, "decode_context": b * ctx_lo, "measured_s": measured,
                      "predicted_s": predict_mixed(prefill_fit, decode_fit, mid, b, b * ctx_lo)})  # fmt: skip
    prepare = measure_prepare(probe, sample, prompt, opts.repeats) if sample is not None else None
    spec = side.spec
    weight_bytes = sum(p.numel() * p.element_size() for p in engine.runner.model.parameters())
    return {
        "block_size": cfg.block_size,
        "kv_capacity_tokens": run_kv if run_kv is not None else engine.capacity_tokens,
        "kv_bytes_per_token": 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * dtype.itemsize,
        "max_batch_tokens": cfg.max_batch_tokens,
        "max_num_seqs": cfg.max_num_seqs,
        "weight_bytes": weight_bytes,
        "prefill_s": {"points": prefill, "fit": prefill_fit},
        "decode_s": {"points": decode, "fit": decode_fit},
        "mixed_check": mixed,
        **({"prepare_s": prepare} if prepare else {}),
    }


def fit_prefill(points: list[list[float]]) -> dict:
    """``knots`` over chunk tokens from the empty-context points; ``attn_s`` per token x context token,
    the least-squares slope of time over ``n * context`` among the points of one chunk size ``n``; the
    causal part inside a chunk (``n^2 / 2``) moves from the knots to ``attn_s``. On a noisy host the
    slope is capped so that no knot loses more than half its time to it."""
    plain = {n: s for n, c, s in points if c == 0}
    by_n: dict[int, list[tuple[float, float]]] = {}
    for n, c, s in points:
        by_n.setdefault(n, []).append((n * c, s))
    attn = 0.0
    for rows in by_n.values():
        if len(rows) > 2 or (len(rows) == 2 and rows[0][0] != rows[1][0]):
            x = np.array([r[0] for r in rows], float)
            y = np.array([r[1] for r in rows], float)
            attn = max(attn, float(np.polyfit(x, y, 1)[0]))
    attn = min(max(0.0, attn), min(s / (n * n) for n, s in plain.items()))
    knots = fit_piecewise(list(plain), [s - attn * n * n / 2 for n, s in plain.items()])["knots"]
    return {"knots": knots, "attn_s": attn}


def fit_decode(points: list[list[float]]) -> dict:
    """``knots`` over batch size at zero context, ``ctx_s`` per context token, from the two contexts of
    one batch size."""
    by_batch: dict[int, dict[int, float]] = {}
    for b, c, s in points:
        by_batch.setdefault(b, {})[c] = s
    ctx = 0.0
    for b, runs in by_batch.items():
        if len(runs) > 1:
            (c0, s0), (c1, s1) = sorted(runs.items())[0], sorted(runs.items())[-1]
            ctx = max(0.0, (s1 - s0) / (b * (c1 - c0)))
    low = {b: min(runs.items())[0] for b, runs in by_batch.items()}
    knots = fit_piecewise(list(low), [by_batch[b][c] - ctx * b * c for b, c in low.items()])["knots"]
    return {"knots": knots, "ctx_s": ctx}


def predict_mixed(prefill: dict, decode: dict, tokens: int, batch: int, context: int) -> float:
    """The simulator's step model (``epd.sim.costs.CostModel.step_s``) for one chunk from empty context."""
    p = piecewise(prefill["knots"], tokens) + prefill["attn_s"] * tokens * tokens / 2
    d = piecewise(decode["knots"], batch) - intercept(decode["knots"]) + decode["ctx_s"] * context
    return p + d
