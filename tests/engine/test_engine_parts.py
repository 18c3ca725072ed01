"""The engine's CPU policy parts on hand-made cases: block manager, prefix hashes, scheduler, sampler."""

from __future__ import annotations

import torch

from epd.language import EngineConfig
from epd.language.block_manager import BlockManager, block_hashes
from epd.language.sampler import sample, uniform_noise
from epd.language.scheduler import Scheduler
from epd.language.sequence import Sequence
from epd.protocol import NewRequest, SamplingParams


def _seq(rid: str, ids: list[int], spans=()) -> Sequence:
    seq = Sequence(request=NewRequest(request_id=rid, prompt_token_ids=ids, items=[], sampling=SamplingParams()))
    seq.token_ids, seq.prompt_len, seq.item_spans = list(ids), len(ids), list(spans)
    return seq


def test_block_hashes_chain_tokens_and_media_content():
    a = _seq("a", list(range(12)), [(4, 8, "img-1")])
    b = _seq("b", list(range(12)), [(4, 8, "img-2")])  # same pad ids, another image
    c = _seq("c", list(range(12)), [(4, 8, "img-1")])
    ha, hb, hc = (block_hashes(s, 4) for s in (a, b, c))
    assert ha == hc
    assert ha[0] == hb[0] and ha[1] != hb[1] and ha[2] != hb[2]  # the image's block and all after differ


def test_prefix_match_takes_shared_blocks_and_lru_evicts_the_tail_first():
    bm = BlockManager(num_blocks=9, block_size=4, prefix_cache=True)  # 8 usable blocks
    a = _seq("a", list(range(14)))
    assert bm.admit(a, bm.match(a), 14)
    a.num_computed = 14
    bm.computed(a)
    bm.release(a)
    b = _seq("b", list(range(12)) + [99, 98])  # shares three full blocks
    cached = bm.match(b)
    shared = list(cached)
    assert len(shared) == 3
    assert bm.admit(b, cached, 14) and b.num_cached_prompt == 12
    assert b.block_table[:3] == shared and all(bm.ref[x] == 1 for x in shared)
    # the other 4 free blocks go to a new prompt; the shared ones stay cached and held
    c = _seq("c", list(range(100, 116)))
    assert bm.admit(c, bm.match(c), 16)
    assert bm.num_free == 0 and not set(c.block_table) & set(shared)
    assert all(bm.cached.get(h) == x for h, x in zip(a.block_hashes[:3], shared, strict=True))
    d = _seq("d", [1])
    assert not bm.admit(d, [], 1)


def test_whole_prompt_hit_still_computes_the_last_token():
    bm = BlockManager(num_blocks=9, block_size=4, prefix_cache=True)
    a = _seq("a", list(range(8)))
    bm.admit(a, [], 8)
    a.num_computed = 8
    bm.computed(a)
    bm.release(a)
    again = _seq("again", list(range(8)))
    assert len(bm.match(again)) == 1  # block 2 holds the last token: it must run to give logits


def test_scheduler_chunks_under_the_budget_and_preempts_the_newest():
    cfg = EngineConfig(max_batch_tokens=6, block_size=2, kv_tokens=16)
    bm = BlockManager(num_blocks=9, block_size=2, prefix_cache=False)
    sched = Scheduler(cfg, bm)
    old, new = _seq("old", list(range(7))), _seq("new", list(range(5)))
    sched.add(old)
    sched.add(new)
    batch = sched.schedule()
    assert [(s.id, n) for s, n in batch.prefills] == [("old", 6)]  # one chunk fills the budget
    old.num_computed += 6
    batch = sched.schedule()
    assert [(s.id, n) for s, n in batch.prefills] == [("old", 1), ("new", 5)]
    old.num_computed += 1
    new.num_computed += 5
    for s in (old, new):  # both sample a token and now decode
        s.output_ids.append(1)
        s.token_ids.append(1)
    while True:  # decode until the 8 blocks run out: the newest sequence is preempted, not the oldest
        batch = sched.schedule()
        if batch.preempted:
            assert [s.id for s in batch.preempted] == ["new"] and new.num_computed == 0
            assert [s.id for s in batch.decodes] == ["old"]
            break
        for s in batch.decodes:
            s.num_computed += 1
            s.output_ids.append(1)
            s.token_ids.append(1)


def test_sampler_is_seeded_per_request_and_batch_independent():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    temp = torch.tensor([0.0, 1.0, 1.0])
    top_k = torch.tensor([0, 0, 5])
    top_p = torch.tensor([1.0, 0.9, 1.0])
    seeds = torch.tensor([1, 7, 7])
    steps = torch.tensor([0, 3, 3])
    tokens = sample(logits, temp, top_k, top_p, seeds, steps, True, True)
    assert tokens[0] == logits[0].argmax()
    assert tokens[2] in logits[2].topk(5).indices
    alone = sample(logits[1:2], temp[1:2], top_k[1:2], top_p[1:2], seeds[1:2], steps[1:2], True, True)
    assert alone[0] == tokens[1]  # the same seed and step give the same token, whatever the batch
    u = uniform_noise(torch.tensor([1, 2]), torch.tensor([0, 0]), 10_000)
    assert u.min() > 0 and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.02
    assert not torch.equal(u[0], u[1])


def test_sampling_distribution_follows_temperature():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    counts = torch.zeros(4)
    for step in range(4000):
        tok = sample(logits, torch.tensor([1.0]), torch.tensor([0]), torch.tensor([1.0]), torch.tensor([5]),
                     torch.tensor([step]), True, False)  # fmt: skip
        counts[tok] += 1
    freq = counts / counts.sum()
    expected = logits.softmax(-1)[0]
    assert (freq - expected).abs().max() < 0.03


def test_warm_up_runs_a_prefill_over_cached_blocks():
    """``warm_up`` must reach the prefill-from-cache attention path (its first call is slow on GPU)
    and leave the hit counters at zero for the run."""
    from epd.bench.engine import TextSide
    from epd.language import LanguageEngine
    from epd.language.models import DecoderSpec

    spec = DecoderSpec(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
        head_dim=16, rms_norm_eps=1e-6, rope_theta=1e4, rope_style="1d", mrope_section=None,
        qkv_bias=True, qk_norm=False, tie_embeddings=False,
    )  # fmt: skip
    engine = LanguageEngine(TextSide(spec), EngineConfig(block_size=4, kv_tokens=256), torch.device("cpu"))
    seen = []
    forward = engine.runner.attention.forward

    def spy(layer, q, k, v, meta):
        seen.append(meta.prefill_from_start)
        return forward(layer, q, k, v, meta)

    engine.runner.attention.forward = spy
    engine.warm_up()
    assert False in seen and True in seen
    assert engine.blocks.hits == engine.blocks.queries == 0
