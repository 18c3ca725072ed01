"""The embedding cache: LRU by bytes in two tiers, demotion to host, promotion on a host hit."""

from __future__ import annotations

import pytest
import torch

from epd.encoder.cache import EmbeddingCache, item_bytes
from epd.encoder.config import EncoderConfig
from epd.models import EncodedItem, ItemMeta

CPU = torch.device("cpu")


def entry(rows: int, fill: float = 0.0) -> EncodedItem:
    meta = ItemMeta(modality="image", token_ids=[1, 2, 3], token_types=[0, 1, 0], info={"grid_thw": [1, 2, 2]})
    return EncodedItem(meta=meta, tensors={"embeds": torch.full((rows, 4), fill)})  # rows * 16 bytes


def test_hit_returns_the_same_tensors_and_its_own_metadata():
    cache = EmbeddingCache(1 << 20, 0, CPU)
    item = entry(2, 1.5)
    cache.put("k", item)
    got, tier = cache.get("k")
    assert tier == "device" and got.tensors["embeds"] is item.tensors["embeds"]
    got.meta.info["grid_thw"] = None  # a receiver scribbling on its copy does not reach the cache
    assert cache.get("k")[0].meta.info["grid_thw"] == [1, 2, 2]
    assert cache.get("other") is None and cache.misses == 1 and cache.hits["device"] == 2


def test_device_overflow_moves_least_recent_to_host_and_a_host_hit_moves_it_back():
    cache = EmbeddingCache(2 * 160, 160, CPU)  # device: two entries of 10 rows; host: one
    for key in "abc":
        cache.put(key, entry(10))
    assert list(cache.device_tier.entries) == ["b", "c"] and list(cache.host_tier.entries) == ["a"]
    got = cache.get("a")
    assert got is not None and got[1] == "host"
    # "a" is back on the device, pushing the least recent ("b") down to the host tier
    assert list(cache.device_tier.entries) == ["c", "a"] and list(cache.host_tier.entries) == ["b"]
    cache.put("d", entry(10))  # "c" goes to host, "b" falls out of both tiers
    assert list(cache.host_tier.entries) == ["c"] and "b" not in cache
    assert cache.num_bytes == {"device": 320, "host": 160}


def test_recency_decides_what_leaves():
    cache = EmbeddingCache(2 * 160, 0, CPU)
    cache.put("a", entry(10))
    cache.put("b", entry(10))
    cache.get("a")  # "a" is now the most recent
    cache.put("c", entry(10))
    assert "a" in cache and "b" not in cache


def test_an_entry_bigger_than_a_tier_skips_it():
    cache = EmbeddingCache(100, 1000, CPU)
    cache.put("big", entry(20))  # 320 bytes: over the device budget, within the host one
    assert "big" in cache.host_tier.entries and cache.get("big")[1] == "host"
    assert cache.num_bytes["device"] == 0
    off = EmbeddingCache(0, 0, CPU)
    off.put("x", entry(1))
    assert not off.enabled and off.get("x") is None


def test_item_bytes_counts_every_tensor():
    item = entry(3)
    item.tensors["deepstack"] = torch.zeros(2, 3, 4, dtype=torch.bfloat16)
    assert item_bytes(item) == 3 * 4 * 4 + 2 * 3 * 4 * 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_tokens": 0}, "encoder.max_batch_tokens=0"),
        ({"decode_threads": 0}, "encoder.decode_threads=0"),
        ({"cache_host_bytes": -1}, "encoder.cache_host_bytes=-1"),
        ({"max_wait_ms": -1.0}, "encoder.max_wait_ms=-1.0"),
    ],
)
def test_bad_encoder_config_says_what_to_change(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EncoderConfig(**kwargs)
