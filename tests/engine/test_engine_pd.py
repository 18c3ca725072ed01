"""A prefill engine hands each request to a decode engine after its first token (KV cache, positions,
media rows); the pair keeps transformers' greedy tokens — with chunked prefill on the prefill side, and
a decode side so small it must preempt and recompute prompts from the media rows it was sent — on
Qwen2.5-VL and Qwen3-VL (DeepStack), in one process (the transfer is a tensor copy)."""

from __future__ import annotations

import torch

from epd.language import EngineConfig, LanguageEngine
from epd.protocol import KvReady
from tests.engine.test_engine_oracle import (  # noqa: F401 - pytest fixtures
    CPU,
    _encoded,
    _workload,
    family_setup,
    references,
)


def _run_split(side, encoder, prefill_cfg: EngineConfig, decode_cfg: EngineConfig):
    prefill = LanguageEngine(side, prefill_cfg, CPU, role="prefill")
    decode = LanguageEngine(side, decode_cfg, CPU, role="decode")
    tokens: dict[str, list[int]] = {}
    finals = {}
    for req, images in _workload(side):
        req.decode_rank = 1
        prefill.add_request(req)
        for j, item in enumerate(_encoded(encoder, images)):
            prefill.add_item(req.request_id, j, item.meta, item.tensors, None, {})
    moved = 0
    while prefill.has_work or decode.has_work:
        for engine in (prefill, decode):
            for out in engine.step() if engine.has_work else []:
                assert out.error is None, out.error
                tokens.setdefault(out.request_id, []).extend(out.token_ids)
                if out.finished:
                    finals[out.request_id] = out
        for h in prefill.take_handoffs():
            msg = KvReady(
                request=h.request,
                token_ids=h.token_ids,
                prompt_len=h.prompt_len,
                rope_delta=h.rope_delta,
                item_spans=h.item_spans,
                num_cached_tokens=h.num_cached_tokens,
                tensor_names=list(h.tensors),
                timestamps=h.timestamps,
            )
            decode.add_prefilled(msg, {name: t.clone() for name, t in h.tensors.items()})
            moved += 1
    assert not prefill.seqs and not decode.seqs
    assert prefill.blocks.num_free == len(prefill.blocks.ref) - 1, "the prefill side kept blocks"
    assert decode.blocks.num_free == len(decode.blocks.ref) - 1, "the decode side kept blocks"
    return tokens, finals, moved


def test_split_equals_transformers(family_setup, references):  # noqa: F811 - fixtures
    side, encoder, _ = family_setup
    tokens, finals, moved = _run_split(
        side, encoder, EngineConfig(max_batch_tokens=7, block_size=4), EngineConfig(block_size=4)
    )
    assert tokens == references
    assert moved == len(references)  # every request went to decode (none ends on its first token)
    assert all(out.kv_transfer_bytes > 0 for out in finals.values())


def test_decode_side_preempts_and_recomputes(family_setup, references):  # noqa: F811 - fixtures
    side, encoder, _ = family_setup
    # expanded prompts are 32-68 tokens (+6-9 out): 100 tokens (25 blocks) hold each request alone, and the
    # first two handed over (two-images, text-only) fill it exactly, so the first to grow preempts the other
    small = EngineConfig(kv_tokens=100, block_size=4, max_batch_tokens=8, prefix_cache=False)
    tokens, finals, _ = _run_split(side, encoder, EngineConfig(block_size=4), small)
    assert tokens == references
    assert sum(out.num_preemptions for out in finals.values()) > 0, "the decode side should have preempted"


def test_mismatched_kv_fails_the_request_alone(family_setup):  # noqa: F811 - a fixture
    side, encoder, _ = family_setup
    decode = LanguageEngine(side, EngineConfig(block_size=4), CPU, role="decode")
    req, _ = _workload(side)[1]  # text only
    bad = torch.zeros(1, 2, 1, 8, 1, 1)  # not this model's layers / block size / heads
    msg = KvReady(request=req, token_ids=[*req.prompt_token_ids, 5], prompt_len=len(req.prompt_token_ids))
    decode.add_prefilled(msg, {"kv": bad})
    outs = decode.step()
    assert len(outs) == 1 and outs[0].finished and "does not fit" in outs[0].error
