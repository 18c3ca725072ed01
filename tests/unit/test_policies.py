"""Encoder-assignment policies on crafted requests: which encoder gets which item, and why."""

from __future__ import annotations

from collections import Counter

import pytest

from epd.scheduler import ENCODER_POLICIES, EncoderLoad, MediaItemInfo, SchedulerConfig, build_encoder_policy

TWO = {0: ("image", "video", "audio"), 1: ("image", "video", "audio")}
THREE = {0: ("image",), 1: ("image", "video"), 2: ("video", "audio")}


def items(request_id: str, *specs: tuple[str, int] | str, hashes: list[str] | None = None) -> list[MediaItemInfo]:
    """Items of one request: ``"image"`` or ``("image", est_tokens)``; ``hashes`` gives content hashes."""
    out = []
    for i, spec in enumerate(specs):
        modality, tokens = (spec, 100) if isinstance(spec, str) else spec
        h = hashes[i] if hashes else None
        out.append(
            MediaItemInfo(
                request_id=request_id,
                index=i,
                modality=modality,
                source=f"{request_id}-{i}",
                est_tokens=tokens,
                content_hash=h,
            )
        )
    return out


def policy(name: str, encoders=TWO, **cfg):
    return build_encoder_policy(SchedulerConfig(encoder_policy=name, **cfg), encoders)


def test_every_policy_is_registered():
    assert set(ENCODER_POLICIES) >= {"round_robin", "least_loaded", "modality", "split", "cache_affinity"}


def test_round_robin_keeps_a_request_on_one_encoder_and_rotates_requests():
    p = policy("round_robin")
    assert p.assign(items("a", "image", "image", "image")) == [0, 0, 0]
    assert p.assign(items("b", "image", "image")) == [1, 1]
    assert p.assign(items("c", "image")) == [0]


def test_round_robin_skips_encoders_without_the_modality():
    p = policy("round_robin", THREE)
    assert p.assign(items("a", "image", "audio")) == [0, 2]  # turn 0: rank 0 has no audio → next in turn
    assert p.assign(items("b", "image", "video")) == [1, 1]
    assert p.assign(items("c", "video")) == [2]


def test_least_loaded_weighs_tokens_not_requests():
    p = policy("least_loaded")
    big = items("big", ("image", 4000))
    assert p.assign(big) == [0]
    assert p.assign(items("s1", ("image", 300), ("image", 300))) == [1, 1]  # 0 < 4000
    assert p.assign(items("s2", ("image", 300))) == [1]  # 600 < 4000: three requests on 1, one on 0
    assert p.load.tokens == {0: 4000, 1: 900} and p.load.items == {0: 1, 1: 3}
    p.on_item_done(0, big[0])  # the encoder reports it finished: its load drains
    assert p.load.tokens[0] == 0
    assert p.assign(items("s3", ("image", 300))) == [0]


def test_least_loaded_rotates_between_idle_encoders():
    p = policy("least_loaded")
    done = []
    for i in range(4):  # each request finishes before the next arrives: every choice is a tie
        its = items(f"r{i}", ("image", 100))
        done.append(p.assign(its)[0])
        p.on_item_done(done[-1], its[0])
    assert done == [0, 1, 0, 1]


def test_least_loaded_release_is_idempotent():
    p = policy("least_loaded")
    it = items("a", ("image", 500))
    p.assign(it)
    p.on_item_done(0, it[0])
    p.on_item_done(0, it[0])  # the request's end reports it again
    assert p.load.tokens == {0: 0, 1: 0} and p.load.items == {0: 0, 1: 0}


def test_split_spreads_one_request_over_every_encoder():
    p = policy("split")
    assert Counter(p.assign(items("a", *["image"] * 8))) == {0: 4, 1: 4}


def test_split_puts_the_largest_items_first_and_avoids_busy_encoders():
    p = policy("split")
    p.assign(items("busy", ("image", 1000)))  # rank 0 now has 1000 outstanding
    ranks = p.assign(items("a", ("image", 600), ("image", 200), ("image", 500), ("image", 100)))
    # largest first onto the least planned: 600 → 1 (0 < 1000), 500 → 1 (600 < 1000), 200 → 0 (1000 < 1100),
    # 100 → 1 (1100 < 1200): the idle encoder takes three items, the busy one one, and they end level
    assert ranks == [1, 0, 1, 1]
    assert p.load.tokens == {0: 1200, 1: 1200}


def test_cache_affinity_sends_the_same_content_to_the_same_encoder():
    p = policy("cache_affinity")
    hashes = [f"{i:032x}" for i in range(40)]
    first = p.assign(items("a", *["image"] * 40, hashes=hashes))
    again = p.assign(items("b", *["image"] * 40, hashes=list(reversed(hashes))))
    assert again == list(reversed(first))
    assert set(first) == {0, 1} and min(Counter(first).values()) >= 10  # the ring spreads distinct content


def test_cache_affinity_moves_only_the_removed_encoders_share():
    four = {r: ("image",) for r in range(4)}
    hashes = [f"h{i}" for i in range(400)]
    full = policy("cache_affinity", four).assign(items("a", *["image"] * 400, hashes=hashes))
    three = policy("cache_affinity", {r: ("image",) for r in (0, 1, 2)}).assign(
        items("a", *["image"] * 400, hashes=hashes)
    )
    moved = [(a, b) for a, b in zip(full, three, strict=True) if a != b]
    assert moved and all(a == 3 for a, _ in moved)  # only rank 3's items found a new home


def test_modality_groups_with_an_inner_policy():
    p = policy("modality", THREE, within_group="least_loaded")
    # image group {0, 1}, video group {1, 2}, audio group {2}
    assert p.assign(items("a", ("image", 500), ("video", 2000), ("audio", 100))) == [0, 1, 2]
    # the groups share one ledger: rank 1 holds 2000 of video, so the next image goes to rank 0 again
    assert p.assign(items("b", ("image", 100))) == [0]
    assert p.assign(items("c", ("video", 10))) == [2]  # rank 2: 100 (audio) < rank 1: 2000


def test_modality_with_split_inside_the_group():
    p = policy("modality", {0: ("image",), 1: ("image",), 2: ("audio",)}, within_group="split")
    ranks = p.assign(items("a", "image", "audio", "image", "image", "image"))
    assert ranks[1] == 2 and Counter(ranks[i] for i in (0, 2, 3, 4)) == {0: 2, 1: 2}


def test_modality_round_robin_rotates_within_each_group():
    p = policy("modality", THREE)
    assert p.assign(items("a", "image", "video")) == [0, 1]
    assert p.assign(items("b", "video")) == [2]  # the video group's own turn, not disturbed by images
    assert p.assign(items("c", "image")) == [1]


def test_content_hash_is_only_needed_by_policies_that_read_it():
    assert policy("cache_affinity").needs_content_hash
    assert policy("modality", within_group="cache_affinity").needs_content_hash
    assert not policy("least_loaded").needs_content_hash


def test_a_modality_nobody_takes_is_refused():
    for name in ("round_robin", "least_loaded", "split", "cache_affinity", "modality"):
        with pytest.raises(ValueError, match="no encoder takes audio"):
            policy(name, {0: ("image",)}).assign(items("a", "audio"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"encoder_policy": "fastest"}, "scheduler.encoder_policy='fastest' is unknown"),
        ({"within_group": "nope"}, "scheduler.within_group='nope' is unknown"),
        ({"encoder_policy": "modality", "within_group": "modality"}, "nest groups"),
        ({"item_tokens": {"image": 0}}, "scheduler.item_tokens.image=0"),
    ],
)
def test_bad_scheduler_config_says_what_to_change(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        SchedulerConfig(**kwargs)


def test_shared_ledger():
    load = EncoderLoad([0, 1])
    a = build_encoder_policy(SchedulerConfig(encoder_policy="least_loaded"), TWO, load)
    a.assign(items("x", ("image", 50)))
    assert load.tokens == {0: 50, 1: 0}
