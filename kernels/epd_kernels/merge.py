"""Embedding merge: text rows from the embedding table, multimodal rows from the encoders.

Only the pure-torch reference exists so far; the fused Triton kernel lands with the kernels issue.
"""

from __future__ import annotations

import torch


def merge_embeddings(
    token_ids: torch.Tensor,  # [L] int64
    embed_table: torch.Tensor,  # [V, H]
    mm_positions: torch.Tensor,  # [M] int64, rows of the prompt that hold multimodal embeddings
    mm_embeds: torch.Tensor,  # [M, H], in the order of mm_positions
) -> torch.Tensor:  # [L, H]
    """``inputs_embeds`` of a prompt: one gather from the table, one row copy of the media rows."""
    if mm_positions.numel() != mm_embeds.shape[0]:
        raise ValueError(f"{mm_positions.numel()} placeholder rows but {mm_embeds.shape[0]} multimodal embeddings")
    out = embed_table[token_ids]
    if mm_positions.numel():
        out.index_copy_(0, mm_positions, mm_embeds.to(out.dtype))
    return out
