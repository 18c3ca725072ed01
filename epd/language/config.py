"""Language engine knobs (``conf/engine/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(kw_only=True)
class EngineConfig:
    """Batching limits of the language engine."""

    max_num_seqs: int = 64
    """Most sequences in flight (prefilling or decoding) on one language instance."""
    max_batch_tokens: int = 8192
    """Token budget of one engine step: decode tokens plus prefill tokens admitted with them."""

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError(f"engine.max_num_seqs must be ≥ 1, got {self.max_num_seqs}")
        if self.max_batch_tokens < 1:
            raise ValueError(f"engine.max_batch_tokens must be ≥ 1, got {self.max_batch_tokens}")
