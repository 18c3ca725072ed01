"""One decoder for the Qwen language models of every family: Qwen2 (qkv bias), Qwen3 (per-head
q/k RMSNorm) and Qwen3-MoE (routed experts), with 1-D, sectioned or interleaved M-RoPE and DeepStack.

The model is flat: one step's tokens of every sequence (prefill chunks and decodes) are one [N, H]
batch; attention reads and writes the paged KV cache through the attention backend, which also
knows where each sequence starts (``AttentionMetadata``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from epd.language.attention import AttentionBackend, AttentionMetadata
from epd.language.models.layers import GatedMLP, MoE, RMSNorm, Rotary
from epd_kernels import deepstack_add_


@dataclass(frozen=True, kw_only=True)
class DecoderSpec:
    """The shape of a Qwen language model, read off its HF text config (``from_hf_config``)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_style: str  # "1d", "sectioned" or "interleaved"
    mrope_section: tuple[int, ...] | None
    qkv_bias: bool
    qk_norm: bool
    tie_embeddings: bool
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = True
    moe_layers: tuple[int, ...] = ()

    @classmethod
    def from_hf_config(
        cls, cfg, rope_style: str, qk_norm: bool, qkv_bias: bool, tie: bool | None = None
    ) -> DecoderSpec:
        rope = dict(getattr(cfg, "rope_parameters", None) or {})
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"rope type {rope['rope_type']!r} is not supported by epd's decoder (only 'default')")
        section = rope.get("mrope_section")
        if rope_style != "1d" and section is None:
            raise ValueError("an M-RoPE model's config has no rope_parameters.mrope_section")
        heads = cfg.num_attention_heads
        num_experts = getattr(cfg, "num_experts", 0) or 0
        moe_layers: tuple[int, ...] = ()
        if num_experts:
            step = getattr(cfg, "decoder_sparse_step", 1) or 1
            dense = set(getattr(cfg, "mlp_only_layers", []) or [])
            moe_layers = tuple(i for i in range(cfg.num_hidden_layers) if i not in dense and (i + 1) % step == 0)
        return cls(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_layers=cfg.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=cfg.num_key_value_heads,
            head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
            rms_norm_eps=cfg.rms_norm_eps,
            rope_theta=float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))),
            rope_style=rope_style,
            mrope_section=tuple(section) if section and rope_style != "1d" else None,
            qkv_bias=qkv_bias,
            qk_norm=qk_norm,
            tie_embeddings=bool(getattr(cfg, "tie_word_embeddings", False) if tie is None else tie),
            num_experts=num_experts,
            num_experts_per_tok=getattr(cfg, "num_experts_per_tok", 0) or 0,
            moe_intermediate_size=getattr(cfg, "moe_intermediate_size", 0) or 0,
            norm_topk_prob=_norm_topk_prob(cfg),
            moe_layers=moe_layers,
        )

    def num_params(self) -> int:
        return sum(p.numel() for p in QwenDecoder(self, None, device="meta").parameters())


def _norm_topk_prob(cfg) -> bool:
    """Whether the router renormalises its top-k weights: the config's ``norm_topk_prob`` (Qwen3-MoE,
    the Qwen3-Omni thinker); transformers' Qwen3-VL-MoE router always does, whatever the config says."""
    if getattr(cfg, "model_type", "") == "qwen3_vl_moe_text":
        return True
    return bool(getattr(cfg, "norm_topk_prob", True))


class Attention(nn.Module):
    def __init__(self, spec: DecoderSpec, layer: int, backend: AttentionBackend | None) -> None:
        super().__init__()
        self.layer = layer
        self.backend = backend
        self.num_heads, self.num_kv_heads, self.head_dim = spec.num_heads, spec.num_kv_heads, spec.head_dim
        self.q_size = spec.num_heads * spec.head_dim
        self.kv_size = spec.num_kv_heads * spec.head_dim
        self.qkv_proj = nn.Linear(spec.hidden_size, self.q_size + 2 * self.kv_size, bias=spec.qkv_bias)
        self.o_proj = nn.Linear(self.q_size, spec.hidden_size, bias=False)
        self.q_norm = RMSNorm(spec.head_dim, spec.rms_norm_eps) if spec.qk_norm else None
        self.k_norm = RMSNorm(spec.head_dim, spec.rms_norm_eps) if spec.qk_norm else None

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, meta: AttentionMetadata, rows=None
    ) -> torch.Tensor:
        """Every row's keys and values go into the cache; the output is for ``rows`` only (None: all)."""
        n = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(n, self.num_heads, self.head_dim)
        k = k.view(n, self.num_kv_heads, self.head_dim)
        v = v.view(n, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.backend.rotate_and_store(self.layer, q, k, v, cos, sin, meta)
        if rows is not None and rows.numel() == 0:  # only the cache wanted this layer
            return x.new_empty(0, x.shape[1])
        out = self.backend.forward(self.layer, q, k, v, meta).reshape(n, self.q_size)  # [N, heads * D]
        return self.o_proj(out if rows is None else out[rows])


class DecoderLayer(nn.Module):
    def __init__(self, spec: DecoderSpec, layer: int, backend: AttentionBackend | None, expert_dtype=None) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.self_attn = Attention(spec, layer, backend)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        if layer in spec.moe_layers:
            self.mlp = MoE(
                spec.hidden_size,
                spec.moe_intermediate_size,
                spec.num_experts,
                spec.num_experts_per_tok,
                spec.norm_topk_prob,
                expert_dtype,
            )
        else:
            self.mlp = GatedMLP(spec.hidden_size, spec.intermediate_size)

    def forward(
        self, h: torch.Tensor, residual: torch.Tensor | None, cos, sin, meta: AttentionMetadata, rows=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The hidden state is ``h + residual`` (``residual`` None: ``h`` alone); returns the next pair,
        for ``rows`` only when given (every row still writes its keys and values)."""
        if residual is None:
            residual, x = h, self.input_layernorm(h)
        else:
            x, residual = self.input_layernorm.add_forward(h, residual)
        attn = self.self_attn(x, cos, sin, meta, rows)
        if rows is not None:
            if rows.numel() == 0:
                return attn, attn
            residual = residual[rows]
        x, residual = self.post_attention_layernorm.add_forward(attn, residual)
        return self.mlp(x), residual


class QwenDecoder(nn.Module):
    """embed_tokens → layers → norm → lm_head over a flat batch. Parameter names are epd's own
    (fused ``qkv_proj``, ``gate_up_proj``, ``w13``/``w2``); ``epd.language.models.loader`` maps
    checkpoints onto them."""

    def __init__(self, spec: DecoderSpec, backend: AttentionBackend | None, device=None, expert_dtype=None) -> None:
        """``expert_dtype``: the routed experts' dtype from the start (the rest is cast by the caller)."""
        super().__init__()
        self.spec = spec
        with torch.device(device or "cpu"):
            self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
            self.layers = nn.ModuleList(DecoderLayer(spec, i, backend, expert_dtype) for i in range(spec.num_layers))
            self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
            self.lm_head = None if spec.tie_embeddings else nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
            self.rotary = Rotary(spec.head_dim, spec.rope_theta, spec.rope_style, spec.mrope_section)

    def set_moe_kernel(self, kernel: str | None) -> None:
        """The routed experts' kernel on CUDA (``epd_kernels.moe``: ``triton``, ``grouped_mm``, ``reference``)."""
        for module in self.modules():
            if isinstance(module, MoE):
                module.kernel = kernel

    @property
    def embed_table(self) -> torch.Tensor:
        return self.embed_tokens.weight

    def forward(
        self,
        embeds: torch.Tensor,  # [N, H] the step's input embeddings (prefill chunks and decodes)
        positions: torch.Tensor,  # [3, N] rope positions (float32; the three rows equal for text)
        meta: AttentionMetadata,
        deepstack: tuple[torch.Tensor, torch.Tensor] | None = None,  # rows [M] of the batch, feats [k, M, H]
        rows: torch.Tensor | None = None,  # [S] the rows whose final hidden state is wanted (None: all)
    ) -> torch.Tensor:  # [N, H] (or [S, H]) final hidden states (before the norm)
        """The last layer computes its attention output and MLP for ``rows`` only: the other rows need
        just their keys and values there (a 16k-token prefill that samples one token skips 1/L of
        its MLP and output-projection work)."""
        # the residual stream is carried as (h, residual) pairs so each norm fuses the add before it
        cos, sin = self.rotary(positions, embeds.dtype)
        h, residual = embeds, None
        last = len(self.layers) - 1
        early = rows is not None and (deepstack is None or deepstack[1].shape[0] <= last)
        for i, layer in enumerate(self.layers):
            h, residual = layer(h, residual, cos, sin, meta, rows if early and i == last else None)
            if deepstack is not None and i < deepstack[1].shape[0]:  # DeepStack: added after layers 0..k-1
                residual = deepstack_add_(h + residual, deepstack[0], deepstack[1][i].to(h.dtype))
                h = torch.zeros_like(h)
        hidden = h + residual
        return hidden[rows] if rows is not None and not early else hidden

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden: [S, H] one row per sequence → [S, V], float32
        w = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return torch.nn.functional.linear(self.norm(hidden), w).float()
