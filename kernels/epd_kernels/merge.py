"""Embedding merge: text rows from the embedding table, multimodal rows from the encoders.

``merge_embeddings`` writes a prompt's ``inputs_embeds`` in one pass: on CUDA one Triton kernel
(plus two tiny index launches, no host sync), elsewhere the pure-torch reference beside it.
``deepstack_add_`` is the DeepStack step of Qwen3-VL / Qwen3-Omni: after LM layer i the layer's
visual features are added onto the visual rows of the hidden states, in place.
"""

from __future__ import annotations

import torch


def merge_embeddings_reference(
    token_ids: torch.Tensor,  # [L] int64
    embed_table: torch.Tensor,  # [V, H]
    mm_positions: torch.Tensor,  # [M] int64, rows of the prompt that hold multimodal embeddings
    mm_embeds: torch.Tensor,  # [M, H], in the order of mm_positions
) -> torch.Tensor:  # [L, H]
    """Pure-torch merge: one gather from the table, then one row copy of the media rows."""
    _check(mm_positions, mm_embeds)
    out = embed_table[token_ids]
    if mm_positions.numel():
        out.index_copy_(0, mm_positions, mm_embeds.to(out.dtype))
    return out


def merge_embeddings(
    token_ids: torch.Tensor,  # [L] int64
    embed_table: torch.Tensor,  # [V, H]
    mm_positions: torch.Tensor,  # [M] int64
    mm_embeds: torch.Tensor,  # [M, H]
) -> torch.Tensor:  # [L, H], embed_table's dtype
    """``inputs_embeds`` of a prompt: row ``mm_positions[j]`` is ``mm_embeds[j]``, every other row
    ``embed_table[token_ids[row]]``. Triton on CUDA (no host sync), the reference elsewhere."""
    if embed_table.is_cuda and _triton_ok():
        from epd_kernels.merge_triton import merge_embeddings_triton

        _check(mm_positions, mm_embeds)
        return merge_embeddings_triton(token_ids, embed_table, mm_positions, mm_embeds)
    return merge_embeddings_reference(token_ids, embed_table, mm_positions, mm_embeds)


def deepstack_add_reference(
    hidden: torch.Tensor,  # [T, H]
    rows: torch.Tensor,  # [M] int64, distinct
    feats: torch.Tensor,  # [M, H]
) -> torch.Tensor:
    """``hidden[rows] += feats`` in place (added in hidden's dtype, as transformers does); returns ``hidden``."""
    _check(rows, feats)
    if rows.numel():
        hidden[rows] = hidden[rows] + feats.to(hidden.dtype)
    return hidden


def deepstack_add_(
    hidden: torch.Tensor,  # [T, H], the flat hidden states of a prefill batch after LM layer i
    rows: torch.Tensor,  # [M] int64, distinct rows of hidden that hold visual tokens
    feats: torch.Tensor,  # [M, H], DeepStack features of layer i, in the order of rows
) -> torch.Tensor:
    """DeepStack: add layer i's visual features onto the visual rows of ``hidden`` in place and
    return it. One Triton kernel on CUDA (no host sync), the reference elsewhere."""
    if hidden.is_cuda and _triton_ok():
        from epd_kernels.merge_triton import deepstack_add_triton

        _check(rows, feats)
        return deepstack_add_triton(hidden, rows, feats)
    return deepstack_add_reference(hidden, rows, feats)


def _check(rows: torch.Tensor, embeds: torch.Tensor) -> None:
    if rows.numel() != embeds.shape[0]:
        raise ValueError(f"{rows.numel()} placeholder rows but {embeds.shape[0]} multimodal embeddings")


def _triton_ok() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
