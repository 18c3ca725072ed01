"""Packed variable-length attention for the vision and audio towers, through transformers' registry.

transformers' towers hand ``cu_seq_lens_q/k`` (the packed segments: images, frames, windows,
audio chunks) to any registered attention function whose name contains "flash"; with SDPA they
loop over the segments in Python instead. epd registers:

- ``epd_flash_auto``: all segments of one length (full-attention blocks of equal images, frames of
  one video) → one dense batched SDPA call; ragged segments (windows) → the varlen kernel.
- ``epd_flash_varlen``: always the varlen kernel (torch's ``varlen_attn``, or flash-attn's when
  installed and torch's is not).
- ``epd_flash_reference``: the pure-torch reference, SDPA over each segment (what CPU and float32 use).

Called without ``cu_seq_lens`` (a padded batch with a mask, as Qwen2-Audio's encoder does), each
falls back to transformers' own SDPA function with the mask SDPA would get.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

AUTO, VARLEN, REFERENCE = "epd_flash_auto", "epd_flash_varlen", "epd_flash_reference"


def attention_reference(
    q: torch.Tensor,  # [N, H, D], segments packed along N
    k: torch.Tensor,  # [N, H, D]
    v: torch.Tensor,  # [N, H, D]
    cu_seqlens: torch.Tensor,  # [S + 1]
    scale: float | None = None,
) -> torch.Tensor:  # [N, H, D]
    """Bidirectional attention within each segment: one SDPA call per segment."""
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        seg = [t[start:end].transpose(0, 1) for t in (q, k, v)]  # [H, n, D]
        out[start:end] = F.scaled_dot_product_attention(*seg, scale=scale).transpose(0, 1)
    return out


def _fast_ok(q: torch.Tensor) -> bool:
    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


def _varlen_kernel(q, k, v, cu_q, cu_k, max_q: int, max_k: int, scale: float | None) -> torch.Tensor:
    default_scale = q.shape[-1] ** -0.5
    extra = {} if scale is None or abs(scale - default_scale) < 1e-12 else {"scale": scale}
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        varlen_attn = None
    # the kernel takes any row stride (v arrives as a strided cut of the towers' qkv), not a strided last dim
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    if varlen_attn is not None:
        return varlen_attn(q, k, v, cu_q.to(torch.int32), cu_k.to(torch.int32), max_q, max_k, **extra)
    from flash_attn import flash_attn_varlen_func  # optional: pip install flash-attn

    return flash_attn_varlen_func(
        q, k, v, cu_q.to(torch.int32), cu_k.to(torch.int32), max_q, max_k, softmax_scale=scale, causal=False
    )


def _uniform_segments(q: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor, max_q: int, max_k: int) -> int:
    """Segment count if every segment has length ``max_q`` (read off shapes: no host sync), else 0."""
    num = cu_q.numel() - 1
    same = cu_q is cu_k or (max_q == max_k and cu_k.numel() == cu_q.numel())
    return num if same and num > 0 and q.shape[0] == num * max_q else 0


def packed_attention(
    q: torch.Tensor,  # [N, H, D]
    k: torch.Tensor,
    v: torch.Tensor,
    cu_q: torch.Tensor,  # [S + 1] int
    cu_k: torch.Tensor,
    max_q: int | None,
    max_k: int | None,
    scale: float | None = None,
    dense_uniform: bool = True,
) -> torch.Tensor:  # [N, H, D]
    """Attention within packed segments: dense SDPA for equal segments (``dense_uniform``), else the
    varlen kernel; the reference on CPU and in float32."""
    if not _fast_ok(q):
        return attention_reference(q, k, v, cu_q, scale)
    if max_q is None or max_k is None:  # not handed down: one read of the boundaries
        max_q = max_k = int((cu_q[1:] - cu_q[:-1]).max())
    num = _uniform_segments(q, cu_q, cu_k, max_q, max_k) if dense_uniform else 0
    if num:
        heads, dim = q.shape[1:]
        seg = [t.view(num, max_q, heads, dim).transpose(1, 2) for t in (q, k, v)]  # [S, H, n, D]
        return F.scaled_dot_product_attention(*seg, scale=scale).transpose(1, 2).reshape(q.shape)
    return _varlen_kernel(q, k, v, cu_q, cu_k, max_q, max_k, scale)


def _hf_function(mode: str) -> Callable:
    def forward(
        module: torch.nn.Module,
        query: torch.Tensor,  # [1, H, N, D]
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None = None,
        dropout: float = 0.0,
        cu_seq_lens_q: torch.Tensor | None = None,
        cu_seq_lens_k: torch.Tensor | None = None,
        max_length_q: int | None = None,
        max_length_k: int | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:  # [1, N, H, D]
        if cu_seq_lens_q is None or query.shape[0] != 1:
            from transformers.integrations.sdpa_attention import sdpa_attention_forward

            kwargs.pop("is_causal", None)
            return sdpa_attention_forward(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=False, **kwargs
            )
        q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [N, H, D]
        cu_k = cu_seq_lens_k if cu_seq_lens_k is not None else cu_seq_lens_q
        if mode == REFERENCE:
            out = attention_reference(q, k, v, cu_seq_lens_q, scaling)
        else:
            max_k = max_length_k if max_length_k is not None else max_length_q
            out = packed_attention(q, k, v, cu_seq_lens_q, cu_k, max_length_q, max_k, scaling, mode == AUTO)
        return out.unsqueeze(0), None

    forward.__name__ = f"{mode}_forward"
    return forward


def register() -> None:
    """Register the three functions (and SDPA's mask builder under their names) with transformers."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    for mode in (AUTO, VARLEN, REFERENCE):
        if mode not in AttentionInterface._global_mapping:
            AttentionInterface.register(mode, _hf_function(mode))
            ALL_MASK_ATTENTION_FUNCTIONS.register(mode, sdpa_mask)
