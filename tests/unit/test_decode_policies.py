"""Prefill → decode policies (``scheduler.decode_policy``): the registry, round_robin and least_loaded."""

from __future__ import annotations

import pytest

from epd.scheduler import SchedulerConfig
from epd.scheduler.decode import DECODE_POLICIES, DecodeLoad, DecodeRequest, build_decode_policy


def req(i: int, tokens: int = 100) -> DecodeRequest:
    return DecodeRequest(request_id=f"r{i}", num_tokens=tokens, max_tokens=16)


def test_registry_and_config_key():
    assert set(DECODE_POLICIES) >= {"round_robin", "least_loaded"}
    assert SchedulerConfig(decode_policy="least_loaded").decode_policy == "least_loaded"
    with pytest.raises(ValueError, match="scheduler.decode_policy='nearest' is unknown"):
        SchedulerConfig(decode_policy="nearest")
    with pytest.raises(ValueError, match="at least one decode instance"):
        build_decode_policy("round_robin", [], 16)


def test_round_robin_takes_the_instances_in_turn():
    policy = build_decode_policy("round_robin", [3, 5, 7], 16)
    assert [policy.assign(req(i)) for i in range(7)] == [3, 5, 7, 3, 5, 7, 3]
    assert policy.load.requests == {3: 3, 5: 2, 7: 2}


def test_least_loaded_prefers_free_blocks_counting_what_is_on_its_way():
    policy = build_decode_policy("least_loaded", [0, 1], 16)
    policy.load.report(0, 100)
    policy.load.report(1, 60)
    assert policy.assign(req(0, tokens=16 * 50)) == 0  # 100 free vs 60
    assert policy.load.available_blocks(0) == 50  # its 50 blocks are pending there
    assert policy.assign(req(1, tokens=16)) == 1  # 60 > 50
    policy.load.admit("r0")  # the blocks were allocated: the next report shows them
    policy.load.report(0, 50)
    assert policy.load.available_blocks(0) == 50 and policy.load.available_blocks(1) == 59
    policy.load.admit("r0")  # twice: no-op
    assert policy.load.pending_blocks == {0: 0, 1: 1}


def test_least_loaded_ties_rotate():
    policy = build_decode_policy("least_loaded", [0, 1, 2], 16)
    for rank in (0, 1, 2):
        policy.load.report(rank, 1000)
    picks = []
    for i in range(3):
        picks.append(policy.assign(req(i, tokens=0)))
    assert sorted(picks) == [0, 1, 2]


def test_finish_releases_the_request():
    load = DecodeLoad([0], block_size=16)
    load.charge(0, req(0, tokens=33))
    assert load.pending_blocks[0] == 3 and load.requests[0] == 1
    load.finish(0, "r0")
    assert load.pending_blocks[0] == 0 and load.requests[0] == 0
