"""Building blocks of the Qwen decoders: RMSNorm, rotary embeddings (1-D, sectioned and interleaved
M-RoPE), the gated MLP and the top-k mixture of experts.

Numerics follow transformers' Qwen modules (RMSNorm in float32, cos/sin computed in float32 and cast
to the activations' dtype, router softmax in float32), so float32 logits match them to rounding.
"""

from __future__ import annotations

import torch
from torch import nn

from epd_kernels.fused import add_rms_norm, rms_norm, silu_mul
from epd_kernels.moe import fused_moe


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        return rms_norm(x.reshape(-1, shape[-1]), self.weight, self.eps).view(shape)

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual) in one pass; ``residual`` may be updated in place."""
        return add_rms_norm(x, residual, self.weight, self.eps)


class Rotary(nn.Module):
    """cos/sin of each token's rope angles from positions [3, N] (t, h, w; all equal for text).

    ``style`` says which position axis drives each frequency: ``1d`` (axis 0 everywhere),
    ``sectioned`` (Qwen2.5-VL: the first ``section[0]`` frequencies from t, the next from h, then w)
    or ``interleaved`` (Qwen3-VL / Omni: t, h, w cycling over the low frequencies, t for the rest).
    """

    def __init__(self, head_dim: int, theta: float, style: str, section: list[int] | None) -> None:
        super().__init__()
        half = head_dim // 2
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))  # [D/2]
        axis = torch.zeros(half, dtype=torch.long)
        if style == "sectioned":
            axis = torch.cat([torch.full((n,), i % 3, dtype=torch.long) for i, n in enumerate(section)])
        elif style == "interleaved":
            for a in (1, 2):
                axis[a : section[a] * 3 : 3] = a
        elif style != "1d":
            raise ValueError(f"unknown rope style {style!r}")
        if axis.numel() != half:
            raise ValueError(f"mrope_section {section} must sum to head_dim/2 = {half}")
        # plain attributes, not buffers: they must stay float32 / int64 when the model is cast to bf16
        self.inv_freq = inv_freq.to(torch.get_default_device())
        self.axis = axis.to(torch.get_default_device())

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # positions: [3, N] float32 → cos, sin: [N, 1, D]
        pos = positions.float()[self.axis]  # [D/2, N]: each frequency's own axis
        freqs = pos.T * self.inv_freq  # [N, D/2]
        emb = torch.cat([freqs, freqs], dim=-1)[:, None, :]
        return emb.cos().to(dtype), emb.sin().to(dtype)


class GatedMLP(nn.Module):
    """SwiGLU with gate and up fused into one matmul: ``gate_up_proj`` [2I, H]."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden, 2 * intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_mul(self.gate_up_proj(x)))


class MoE(nn.Module):
    """Top-k routed experts (Qwen3-MoE): ``gate`` [E, H], ``w13`` [E, 2I, H] (gate; up), ``w2`` [E, H, I].

    ``kernel`` picks the path of ``epd_kernels.moe.fused_moe`` on CUDA: ``triton`` (``auto``) or
    ``grouped_mm``, both without a host sync, so decode steps of every batch size are captured in
    CUDA graphs; or ``reference``. Off CUDA the reference always runs: transformers' loop over the
    used experts, float32-exact. The runner sets it from ``engine.moe_kernel``.
    """

    def __init__(
        self, hidden: int, intermediate: int, num_experts: int, top_k: int, norm_topk: bool, dtype=None
    ) -> None:
        super().__init__()
        self.gate = nn.Linear(hidden, num_experts, bias=False)
        # the experts are ~95% of a MoE model: built in the run's dtype (a 30B model never exists in float32)
        self.w13 = nn.Parameter(torch.empty(num_experts, 2 * intermediate, hidden, dtype=dtype))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, intermediate, dtype=dtype))
        self.top_k = top_k
        self.norm_topk = norm_topk
        self.kernel = "auto"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [N, H] → [N, H]
        kernel = "reference" if not x.is_cuda else ("triton" if self.kernel == "auto" else self.kernel)
        return fused_moe(x, self.gate.weight, self.w13, self.w2, self.top_k, self.norm_topk, kernel=kernel)
