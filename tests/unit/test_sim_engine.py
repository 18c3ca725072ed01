"""The simulator's language instance makes the same scheduling decisions as epd's LanguageEngine.

Both run epd's ``Scheduler`` and ``BlockManager``; this checks the bookkeeping around them
(``SimEngine`` mirrors ``LanguageEngine``) step by step, under chunked prefill and preemption (a KV
cache too small for the batch), against the real engine on the tiny Qwen2.5-VL checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch

from epd.language import EngineConfig, LanguageEngine
from epd.models import detect_family
from epd.profile.synthetic import make_profile
from epd.protocol import NewRequest, SamplingParams
from epd.sim.config import SimOptions
from epd.sim.costs import CostModel
from epd.sim.events import Device, EventLoop
from epd.sim.language import SimEngine, SimSide
from epd.tiny import cached_tiny

CFG = EngineConfig(kv_tokens=96, max_batch_tokens=40, max_num_seqs=8, block_size=16, attention="torch")


def requests() -> list[NewRequest]:
    rng = np.random.default_rng(0)
    return [
        NewRequest(
            request_id=f"r{i}",
            prompt_token_ids=rng.integers(100, 600, size=30 + i).tolist(),
            items=[],
            sampling=SamplingParams(max_tokens=24, ignore_eos=True),
        )  # fmt: skip
        for i in range(3)
    ]


def trace(engine) -> list[tuple]:
    """Every step's batch, as (prefill chunks, decodes, preempted), by request id."""
    steps = []
    schedule = engine.scheduler.schedule

    def recording():
        batch = schedule()
        steps.append(
            (
                tuple((s.id, n) for s, n in batch.prefills),
                tuple(s.id for s in batch.decodes),
                tuple(s.id for s in batch.preempted),
            )
        )
        return batch

    engine.scheduler.schedule = recording
    for req in requests():
        engine.add_request(req)
    tokens: dict[str, int] = {}
    while engine.has_work:
        for out in engine.step():
            tokens[out.request_id] = tokens.get(out.request_id, 0) + len(out.token_ids)
    return steps, tokens


def test_sim_engine_schedules_like_the_language_engine():
    ckpt = cached_tiny("qwen2_5_vl")
    side = detect_family(ckpt).load_language(ckpt, False)
    real, real_tokens = trace(LanguageEngine(side, CFG, torch.device("cpu"), torch.float32))
    loop = EventLoop()
    costs = CostModel(make_profile(prefill_s=0.01, decode_s=0.001), SimOptions(), "nccl")
    sim = SimEngine(loop, CFG, costs, Device("gpu0"), SimSide({}), CFG.kv_tokens)
    simulated, sim_tokens = trace(sim)
    assert simulated == real
    assert sim_tokens == real_tokens == {"r0": 24, "r1": 24, "r2": 24}
    assert any(preempted for _, _, preempted in real), "the KV cache was meant to force a preemption"
    assert any(len(prefills) and decodes for prefills, decodes, _ in real), "and prefill chunks mixed with decodes"
    assert loop.now > 0
