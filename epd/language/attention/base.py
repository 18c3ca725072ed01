"""What an attention backend sees: the step's layout over the paged KV cache, and its contract."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch


@dataclass(kw_only=True)
class AttentionMetadata:
    """Layout of one step's flat batch: ``num_prefill_tokens`` rows of prefill chunks first (one run
    per sequence), then one row per decoding sequence.

    A prefill chunk's queries sit at the end of its sequence's context: query i of a chunk of
    ``q_len`` tokens over a context of ``k_len`` tokens (cached + chunk) sees keys 0..k_len-q_len+i.
    """

    slot_mapping: torch.Tensor  # [N] int64: cache slot (block * block_size + offset) of each new token
    num_prefill_tokens: int = 0
    # prefill chunks, one entry per sequence
    prefill_q_lens: list[int] = field(default_factory=list)
    prefill_k_lens: list[int] = field(default_factory=list)
    cu_seqlens_q: torch.Tensor | None = None  # [S_p + 1] int32
    cu_seqlens_k: torch.Tensor | None = None  # [S_p + 1] int32
    prefill_block_tables: torch.Tensor | None = None  # [S_p, W] int32
    prefill_context_slots: torch.Tensor | None = None  # [sum k_lens] int64: slots of every context token
    prefill_from_start: bool = True
    """Every chunk starts its sequence (no cached prefix): keys are this step's own."""
    # decodes, one entry per sequence
    num_decodes: int = 0
    decode_block_tables: torch.Tensor | None = None  # [S_d, W] int32
    decode_context_lens: torch.Tensor | None = None  # [S_d] int32, the new token included
    decode_context_lens_host: list[int] = field(default_factory=list)


class AttentionBackend(ABC):
    """Writes each layer's new keys/values into the paged cache (``rotate_and_store``) and attends
    over it (``forward``).

    The cache is one tensor [num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim] bound
    once by the model runner (``bind``); ``forward`` must be safe inside a CUDA graph capture when
    the batch holds decodes only and ``supports_graphs`` is true.
    """

    supports_graphs: bool = False

    def bind(self, kv_cache: torch.Tensor) -> None:
        self.kv_cache = kv_cache
        self.block_size = kv_cache.shape[3]

    @abstractmethod
    def forward(
        self,
        layer: int,
        q: torch.Tensor,  # [N, heads, D]
        k: torch.Tensor,  # [N, kv_heads, D]
        v: torch.Tensor,  # [N, kv_heads, D]
        meta: AttentionMetadata,
    ) -> torch.Tensor:  # [N, heads, D]
        """Attend over ``layer``'s cache, where this step's k, v already are (``rotate_and_store``);
        k and v are handed over too, for prefills that need no cached context."""

    def rotate_and_store(
        self,
        layer: int,
        q: torch.Tensor,  # [N, heads, D]
        k: torch.Tensor,  # [N, kv_heads, D]
        v: torch.Tensor,
        cos: torch.Tensor,  # [N, 1, D]
        sin: torch.Tensor,
        meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary on q and k, and the rotated k and v written at ``meta.slot_mapping`` in ``layer``'s
        cache (one kernel on GPU); returns the rotated q and k."""
        from epd_kernels.fused import rotary_store

        k_cache, v_cache = self.kv_cache[layer]
        return rotary_store(q, k, v, cos, sin, k_cache, v_cache, meta.slot_mapping)

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata) -> None:
        k_cache, v_cache = self.kv_cache[layer]  # [blocks, block_size, kv_heads, D] each
        k_cache.view(-1, *k.shape[1:]).index_copy_(0, meta.slot_mapping, k.to(k_cache.dtype))
        v_cache.view(-1, *v.shape[1:]).index_copy_(0, meta.slot_mapping, v.to(v_cache.dtype))

    def context(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [T, kv_heads, D] at cache ``slots``."""
        k_cache, v_cache = self.kv_cache[layer]
        shape = k_cache.shape[2:]
        return k_cache.view(-1, *shape)[slots], v_cache.view(-1, *shape)[slots]
