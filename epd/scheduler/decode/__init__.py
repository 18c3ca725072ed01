"""Prefill → decode instance choice (``scheduler.decode_policy``), one file per policy.

With separate prefill and decode instances, a prefill instance that has sampled a request's first
token picks the decode instance that continues it. Policies are registered in ``DECODE_POLICIES``;
``epd.sim`` drives them today and the real prefill instances will use the same registry.
"""

from epd.registry import Registry
from epd.scheduler.decode.base import DecodeLoad, DecodePolicy, DecodeRequest

DECODE_POLICIES: Registry[DecodePolicy] = Registry("decode policy", "epd.scheduler.decode")


def build_decode_policy(name: str, ranks: list[int], block_size: int, load: DecodeLoad | None = None) -> DecodePolicy:
    """The decode policy ``name`` over the decode instances' leader ``ranks``."""
    return DECODE_POLICIES.get(name)(ranks, block_size, load)


__all__ = ["DECODE_POLICIES", "DecodeLoad", "DecodePolicy", "DecodeRequest", "build_decode_policy"]
