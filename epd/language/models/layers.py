"""Building blocks of the Qwen decoders: RMSNorm, rotary embeddings (1-D, sectioned and interleaved
M-RoPE), the gated MLP and the top-k mixture of experts.

Numerics follow transformers' Qwen modules (RMSNorm in float32, cos/sin computed in float32 and cast
to the activations' dtype, router softmax in float32), so float32 logits match them to rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from epd_kernels.fused import add_rms_norm, rms_norm, silu_mul


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

    Two equivalent paths: ``grouped`` sorts tokens by expert and runs one matmul per used expert
    (reads each expert once; needs the counts on the host, so not inside a CUDA graph), and
    ``gathered`` gathers each token's k experts' weights (no host sync: decode under CUDA graphs).
    """

    def __init__(self, hidden: int, intermediate: int, num_experts: int, top_k: int, norm_topk: bool) -> None:
        super().__init__()
        self.gate = nn.Linear(hidden, num_experts, bias=False)
        self.w13 = nn.Parameter(torch.empty(num_experts, 2 * intermediate, hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, intermediate))
        self.top_k = top_k
        self.norm_topk = norm_topk
        self.gathered_max_tokens = 16
        """Token counts up to this use the gathered path (decode batches)."""

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = torch.softmax(self.gate(x).float(), dim=-1)  # [N, E]
        weights, experts = torch.topk(probs, self.top_k, dim=-1)  # [N, k]
        if self.norm_topk:
            weights = weights / weights.sum(-1, keepdim=True)
        return weights.to(x.dtype), experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [N, H]
        weights, experts = self.route(x)
        if x.shape[0] <= self.gathered_max_tokens or (x.is_cuda and torch.cuda.is_current_stream_capturing()):
            return self._gathered(x, weights, experts)
        return self._grouped(x, weights, experts)

    def _gathered(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        w13 = self.w13[experts]  # [N, k, 2I, H]
        h = torch.einsum("nh,nkih->nki", x, w13)
        gate, up = h.chunk(2, dim=-1)
        out = torch.einsum("nki,nkhi->nkh", F.silu(gate) * up, self.w2[experts])  # [N, k, H]
        return (out * weights[..., None]).sum(1)

    def _grouped(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        flat = experts.flatten()  # [N*k]
        order = torch.argsort(flat, stable=True)
        token = order // self.top_k  # token of each (token, slot) pair, grouped by expert
        counts = torch.bincount(flat, minlength=self.w13.shape[0]).tolist()  # host sync (eager only)
        out = torch.zeros_like(x)
        start = 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            idx = token[start : start + n]
            gate, up = F.linear(x[idx], self.w13[e]).chunk(2, dim=-1)
            y = F.linear(F.silu(gate) * up, self.w2[e]) * weights.flatten()[order[start : start + n], None]
            out.index_add_(0, idx, y)
            start += n
        return out
