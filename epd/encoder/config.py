"""``EncoderConfig`` (the ``encoder`` config group): batching, decode threads, preprocessing and the embedding cache."""

from __future__ import annotations

from dataclasses import dataclass

from epd.models.preprocess import PREPROCESS_MODES


@dataclass(kw_only=True)
class EncoderConfig:
    """How an encoder instance batches items across requests and caches their embeddings."""

    max_batch_tokens: int = 16384
    """Token budget of one tower call: items of concurrent requests are packed (in arrival order) until
    their estimated output tokens would pass it. An item over the budget runs alone."""
    max_batch_items: int = 32
    """Most items in one tower call."""
    max_wait_ms: float = 0.0
    """How long the oldest decoded item may wait for more items to fill the budget before the tower
    runs anyway. 0 = run as soon as the tower is free with whatever is decoded (continuous batching)."""
    decode_threads: int = 2
    """Threads that fetch and decode media, so decoding the next items overlaps the tower."""
    preprocess_device: str = "auto"
    """Where the processor's media math (resize, rescale, normalise, patchify; mel features) runs:
    ``host`` = the checkpoint's HF processor on the CPU; ``device`` = the same processor code on the
    encoder's device (images decoded straight to tensors; on a CPU encoder, torch on the CPU);
    ``auto`` = ``device`` on a GPU, ``host`` on the CPU. Tokenizing the placeholders stays on the host."""
    cache_device_bytes: int = 512 << 20
    """Embedding cache, device tier: bytes of embeddings kept where the tower ran (LRU); 0 = off."""
    cache_host_bytes: int = 2 << 30
    """Embedding cache, host tier: bytes kept in host memory for entries evicted from the device tier
    (LRU; a hit moves the entry back); 0 = off. With both tiers 0 the cache is off."""

    def __post_init__(self) -> None:
        for key in ("max_batch_tokens", "max_batch_items", "decode_threads"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"encoder.{key}={value!r}: set an integer of 1 or more")
        for key in ("cache_device_bytes", "cache_host_bytes"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"encoder.{key}={value!r}: set a byte count of 0 (off) or more")
        if self.preprocess_device not in PREPROCESS_MODES:
            modes = ", ".join(PREPROCESS_MODES)
            raise ValueError(f"encoder.preprocess_device={self.preprocess_device!r}: choose one of {modes}")
        if not self.max_wait_ms >= 0:
            raise ValueError(f"encoder.max_wait_ms={self.max_wait_ms!r}: set 0 or more milliseconds")

    @property
    def cache_enabled(self) -> bool:
        return self.cache_device_bytes > 0 or self.cache_host_bytes > 0
