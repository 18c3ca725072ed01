"""Fused element-wise steps of the vision towers: axial rotary embedding and RMSNorm.

transformers runs both as chains of float32 ops (the rotary ~14 passes over q and k per layer,
the RMSNorm 6); each kernel here reads its input once and writes its output once, computing in
float32 exactly as the reference beside it does, then rounding once to the input dtype. Likewise
``silu_mul`` does the gated MLP's ``silu(gate) * up`` in one pass instead of three.
"""

from __future__ import annotations

import torch


def rotary_reference(
    q: torch.Tensor,  # [N, H, D]
    k: torch.Tensor,  # [N, H, D]
    cos: torch.Tensor,  # [N, D]
    sin: torch.Tensor,  # [N, D]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x * cos + rotate_half(x) * sin`` in float32, returned in x's dtype (transformers' vision rotary)."""

    def rotate(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        xf = x.float()
        rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
        return (xf * cos[:, None].float() + rotated * sin[:, None].float()).to(x.dtype)

    return rotate(q), rotate(k)


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Vision rotary embedding of q and k: one Triton launch on CUDA, the reference elsewhere."""
    if q.is_cuda and q.dim() == 3 and q.shape[-1] % 2 == 0:
        from epd_kernels.vision_triton import rotary_triton

        return rotary_triton(q, k, cos, sin)
    return rotary_reference(q, k, cos, sin)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * (x / rms(x)).to(x.dtype)`` with the statistics in float32 (Qwen2.5-VL's RMSNorm)."""
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim: one Triton launch on CUDA, the reference elsewhere."""
    if x.is_cuda:
        from epd_kernels.vision_triton import rms_norm_triton

        return rms_norm_triton(x, weight, eps)
    return rms_norm_reference(x, weight, eps)


def silu_mul_reference(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for ``gate_up`` = [..., 2W] holding gate then up, in its dtype (two roundings,
    as transformers' ``act_fn(gate_proj(x)) * up_proj(x)``)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of a [..., 2W] gate-up product: one Triton launch on CUDA, the reference elsewhere."""
    if gate_up.is_cuda:
        from epd_kernels.vision_triton import silu_mul_triton

        return silu_mul_triton(gate_up)
    return silu_mul_reference(gate_up)
