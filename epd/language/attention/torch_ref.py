"""Pure-torch attention over the paged cache: one SDPA call per sequence. The reference every other
backend is checked against, and the CPU path."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from epd.language.attention.base import AttentionBackend, AttentionMetadata


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of ``q`` [n, H, D] at the end of a context ``k``, ``v`` [T, H_kv, D] → [n, H, D]."""
    n, total = q.shape[0], k.shape[0]
    mask = None
    if n > 1:  # query i sits at position total - n + i and sees keys up to it
        rows = torch.arange(n, device=q.device)[:, None] + (total - n)
        mask = torch.arange(total, device=q.device)[None, :] <= rows
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None],
        k.transpose(0, 1)[None],
        v.transpose(0, 1)[None],
        attn_mask=mask,
        scale=scale,
        enable_gqa=True,
    )  # [1, H, n, D]
    return out[0].transpose(0, 1)


class TorchAttention(AttentionBackend):
    def __init__(self, scale: float) -> None:
        self.scale = scale

    def forward(self, layer: int, q, k, v, meta: AttentionMetadata) -> torch.Tensor:
        out = torch.empty_like(q)
        start, slot_start = 0, 0
        for q_len, k_len in zip(meta.prefill_q_lens, meta.prefill_k_lens, strict=True):
            slots = meta.prefill_context_slots[slot_start : slot_start + k_len]
            keys, values = self.context(layer, slots)
            out[start : start + q_len] = attend(q[start : start + q_len], keys, values, self.scale)
            start, slot_start = start + q_len, slot_start + k_len
        for i, ctx in enumerate(meta.decode_context_lens_host):
            table = meta.decode_block_tables[i]
            pos = torch.arange(ctx, device=q.device)
            slots = table[pos // self.block_size].long() * self.block_size + pos % self.block_size
            keys, values = self.context(layer, slots)
            row = meta.num_prefill_tokens + i
            out[row : row + 1] = attend(q[row : row + 1], keys, values, self.scale)
        return out
