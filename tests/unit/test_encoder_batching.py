"""Encoder role: cross-request batches under a token budget and max wait, cache hits, shared in-flight items."""

from __future__ import annotations

import tempfile
import time

import numpy as np
import pytest
import torch
from PIL import Image

from epd.encoder import EncoderRole
from epd.encoder.batcher import BatchRule, Ready
from epd.encoder.config import EncoderConfig
from epd.media import MediaConfig
from epd.models import MediaInput, detect_family
from epd.protocol import EncodeItem
from epd.scheduler.content_hash import ContentHasher

LOCAL = MediaConfig(allowed_dirs=[tempfile.gettempdir()])  # the test media lie under tmp_path


def test_batch_rule_fills_the_budget_in_arrival_order():
    rule = BatchRule(max_batch_tokens=100, max_batch_items=8, max_wait_s=10.0)
    ready = [Ready(payload=i, num_tokens=t, ready_at=0.0) for i, t in enumerate([40, 40, 40, 10])]
    assert rule.launch_at(ready) == 0.0  # 130 tokens ready: over the budget, go now
    assert [r.payload for r in rule.take(ready, 0.0)] == [0, 1]  # 80; the third would pass 100
    assert rule.take(ready, 1.0) == []  # 50 tokens: waits for more until 10 s after the oldest was ready
    assert [r.payload for r in rule.take(ready, 10.0)] == [2, 3]


def test_batch_rule_item_cap_and_oversized_first_item():
    rule = BatchRule(max_batch_tokens=100, max_batch_items=2, max_wait_s=0.0)
    ready = [Ready(payload=i, num_tokens=t, ready_at=5.0) for i, t in enumerate([500, 1, 1, 1])]
    assert [r.payload for r in rule.take(ready, 5.0)] == [0]  # alone: it is over the budget by itself
    assert [r.payload for r in rule.take(ready, 5.0)] == [1, 2]  # item cap
    assert [r.payload for r in rule.take(ready, 5.0)] == [3]  # max wait 0: whatever is ready
    assert rule.launch_at(ready) is None


@pytest.fixture(scope="module")
def tower(tiny_qwen25vl):
    return detect_family(tiny_qwen25vl).load_encoder(tiny_qwen25vl, False, torch.device("cpu"), torch.float32)


class CountingTower:
    """The real tower, with a record of the batches it was handed."""

    def __init__(self, tower) -> None:
        self.tower = tower
        self.batches: list[int] = []

    def __getattr__(self, name):
        return getattr(self.tower, name)

    def encode(self, inputs):
        self.batches.append(len(inputs))
        return self.tower.encode(inputs)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("img")
    paths = []
    for i, size in enumerate([(320, 240), (200, 400), (640, 360), (300, 300)]):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(d / f"{i}.png")
        paths.append(str(d / f"{i}.png"))
    return paths


def msg(request_id: str, source: str, hashed: bool = True) -> EncodeItem:
    h = ContentHasher(LOCAL).hash(source) if hashed else None
    return EncodeItem(request_id=request_id, index=0, modality="image", source=source, language_rank=1, content_hash=h)


def drain(role: EncoderRole, expect: int, timeout: float = 30.0) -> list:
    out, deadline = [], time.time() + timeout
    while len(out) < expect and time.time() < deadline:
        out += role.step()
        time.sleep(role.wait_s() or 0.0)
    assert len(out) == expect
    return out


def test_items_of_concurrent_requests_share_one_tower_call(tower, images):
    spy = CountingTower(tower)
    role = EncoderRole(
        spy,
        LOCAL,
        EncoderConfig(max_batch_items=3, max_wait_ms=60_000, cache_device_bytes=0, cache_host_bytes=0),
    )
    for i, path in enumerate(images[:3]):
        role.add(msg(f"r{i}", path))
    results = sorted(drain(role, 3), key=lambda r: r.msg.request_id)
    assert spy.batches == [3]
    assert {r.batch_id for r in results} == {0} and {r.batch_size for r in results} == {3}
    assert all(r.cache == "off" for r in results)
    for res, path in zip(results, images[:3], strict=True):  # packed together = each alone
        from epd.media import load_image

        alone = tower.encode([MediaInput(modality="image", data=load_image(path, cfg=LOCAL))])[0]
        assert res.item.meta.token_ids == alone.meta.token_ids
        torch.testing.assert_close(res.item.tensors["embeds"], alone.tensors["embeds"], rtol=1e-5, atol=1e-5)
        assert res.num_tokens == alone.meta.num_embeds == res.est_tokens  # the processor sized it exactly
        stages = ("encode_queue_start", "fetch_start", "fetch_end", "preprocess_end", "encode_start", "encode_end")
        assert set(stages) <= set(res.timestamps)
        assert [res.timestamps[s] for s in stages] == sorted(res.timestamps[s] for s in stages)
    role.close()


def test_token_budget_splits_batches(tower, images):
    spy = CountingTower(tower)
    cfg = EncoderConfig(max_batch_tokens=130, max_wait_ms=300, cache_device_bytes=0, cache_host_bytes=0)
    role = EncoderRole(spy, LOCAL, cfg)
    sizes = {}
    for i, path in enumerate(images):
        role.add(msg(f"r{i}", path))
    results = drain(role, 4)
    for r in results:
        sizes.setdefault(r.batch_id, []).append(r.num_tokens)
    assert sum(spy.batches) == 4 and len(spy.batches) >= 2
    assert all(sum(tokens) <= 130 or len(tokens) == 1 for tokens in sizes.values())
    role.close()


def test_a_repeated_item_is_served_from_the_cache_without_decode_or_tower(tower, images):
    spy = CountingTower(tower)
    role = EncoderRole(spy, LOCAL, EncoderConfig())
    role.add(msg("a", images[0]))
    (first,) = drain(role, 1)
    role.add(msg("b", images[0]))
    assert role.has_work and not role._decoding  # no decode was started
    (hit,) = drain(role, 1)
    assert spy.batches == [1] and first.cache == "miss" and hit.cache == "device"
    assert hit.batch_id == -1 and "fetch_start" not in hit.timestamps
    assert hit.item.meta.token_ids == first.item.meta.token_ids and hit.num_tokens == first.num_tokens
    assert torch.equal(hit.item.tensors["embeds"], first.item.tensors["embeds"])
    role.close()


def test_identical_items_in_flight_are_encoded_once(tower, images):
    spy = CountingTower(tower)
    role = EncoderRole(spy, LOCAL, EncoderConfig())
    role.add(msg("a", images[1]))
    role.add(msg("b", images[1]))
    role.add(msg("c", images[2]))
    results = {r.msg.request_id: r for r in drain(role, 3)}
    assert sum(spy.batches) == 2
    assert results["a"].cache == "miss" and results["b"].cache == "inflight" and results["c"].cache == "miss"
    assert torch.equal(results["a"].item.tensors["embeds"], results["b"].item.tensors["embeds"])
    role.close()


def test_a_bad_item_fails_alone_and_its_twins_with_it(tower, images, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    role = EncoderRole(CountingTower(tower), LOCAL, EncoderConfig())
    role.add(msg("bad", str(broken)))
    role.add(msg("twin", str(broken)))
    role.add(msg("good", images[3]))
    results = {r.msg.request_id: r for r in drain(role, 3)}
    assert "cannot decode image" in results["bad"].error and results["twin"].error == results["bad"].error
    assert results["good"].error is None and results["good"].item is not None
    assert len(role.cache.device_tier.entries) == 1  # only the good item was cached
    role.close()


def test_cache_key_holds_the_processing_parameters(tower, images):
    a = EncoderRole(tower, LOCAL, EncoderConfig())
    b = EncoderRole(tower, MediaConfig(allowed_dirs=LOCAL.allowed_dirs, video_fps=1.0), EncoderConfig())
    m = msg("a", images[0])
    assert a._key(m) != b._key(m) and a._key(m).startswith("image:")
    assert a._key(msg("a", images[0], hashed=False)) is None
    off = EncoderRole(tower, LOCAL, EncoderConfig(cache_device_bytes=0, cache_host_bytes=0))
    assert off._key(m) is None
    for role in (a, b, off):
        role.close()


def test_videos_and_images_of_different_requests_share_one_call(tower, images, tmp_path):
    from epd.media.synth import write_test_video

    videos = [str(write_test_video(tmp_path / f"v{i}.mp4", 1.0 + i, 8, (96, 64), seed=i)) for i in range(2)]
    spy = CountingTower(tower)
    cfg = EncoderConfig(max_batch_items=3, max_wait_ms=60_000, cache_device_bytes=0, cache_host_bytes=0)
    role = EncoderRole(spy, LOCAL, cfg)
    role.add(EncodeItem(request_id="v0", index=0, modality="video", source=videos[0], language_rank=1))
    role.add(msg("i", images[0]))
    role.add(EncodeItem(request_id="v1", index=0, modality="video", source=videos[1], language_rank=1))
    results = {r.msg.request_id: r for r in drain(role, 3)}
    assert spy.batches == [3] and {r.batch_size for r in results.values()} == {3}
    for rid, res in results.items():
        alone = tower.encode([role.decoder.decode(res.msg)])[0]
        assert res.item.meta.token_ids == alone.meta.token_ids and res.item.meta.info == alone.meta.info, rid
        torch.testing.assert_close(res.item.tensors["embeds"], alone.tensors["embeds"], rtol=1e-5, atol=1e-5)
    role.close()
