"""Forward pass of a Qwen-style decoder over a flat batch of sequences (prefills and decodes mixed).

The HF modules hold the weights; this file owns the batching: every linear layer runs once over all
tokens of the step, attention runs per sequence against that sequence's KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class KVCache:
    """One sequence's keys and values, per layer: [num_kv_heads, T, head_dim]."""

    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.keys[0].shape[1] if self.keys else 0

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
        else:
            self.keys[layer] = torch.cat([self.keys[layer], k], dim=1)
            self.values[layer] = torch.cat([self.values[layer], v], dim=1)
        return self.keys[layer], self.values[layer]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class TextDecoder:
    """Runs ``text_model`` (embed_tokens, layers, norm, rotary_emb) and ``lm_head`` on flat batches."""

    def __init__(self, text_model: torch.nn.Module, lm_head: torch.nn.Module) -> None:
        self.model = text_model
        self.lm_head = lm_head
        cfg = text_model.config
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scale = self.head_dim**-0.5
        self.mrope = hasattr(text_model.rotary_emb, "mrope_section")  # else plain 1-D RoPE

    @property
    def embed_table(self) -> torch.Tensor:
        return self.model.embed_tokens.weight

    @torch.inference_mode()
    def forward(
        self,
        embeds: torch.Tensor,  # [N, H], the step's tokens of every sequence, concatenated
        positions: torch.Tensor,  # [3, N] rope positions (all three rows equal for text)
        seq_lens: list[int],  # tokens of each sequence in this step, sum = N
        caches: list[KVCache],  # one per sequence, extended in place
        deepstack: tuple[torch.Tensor, torch.Tensor] | None = None,  # rows [M] of the batch, features [k, M, H]
    ) -> torch.Tensor:  # [S, V] logits of each sequence's last token of the step
        n = embeds.shape[0]
        rope_pos = positions[:, None, :] if self.mrope else positions[:1]  # [3, 1, N] or [1, N]
        cos, sin = self.model.rotary_emb(embeds[None], rope_pos)  # [1, N, D] each
        cos, sin = cos[0, :, None, :], sin[0, :, None, :]  # [N, 1, D]
        h = embeds
        for i, layer in enumerate(self.model.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).view(n, self.num_heads, self.head_dim)
            k = attn.k_proj(x).view(n, self.num_kv_heads, self.head_dim)
            v = attn.v_proj(x).view(n, self.num_kv_heads, self.head_dim)
            if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm over each head before rope
                q, k = attn.q_norm(q), attn.k_norm(k)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            out = self._attention(i, q, k, v, seq_lens, caches)  # [N, heads * head_dim]
            h = h + attn.o_proj(out)
            h = h + self._mlp(layer.mlp, layer.post_attention_layernorm(h))
            if deepstack is not None and i < deepstack[1].shape[0]:  # DeepStack: add after layers 0..k-1
                rows, feats = deepstack
                h = h.index_add(0, rows, feats[i].to(h.dtype))
        last = torch.tensor(seq_lens, device=h.device).cumsum(0) - 1
        return self.lm_head(self.model.norm(h[last]))

    @staticmethod
    def _mlp(mlp: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = mlp(x[None])  # MoE blocks want [B, L, H]
        out = out[0] if isinstance(out, tuple) else out  # some return (hidden, router_logits)
        return out.reshape(x.shape)

    def _attention(self, layer: int, q, k, v, seq_lens: list[int], caches: list[KVCache]) -> torch.Tensor:
        outs = []
        start = 0
        for seq_len, cache in zip(seq_lens, caches, strict=True):
            end = start + seq_len
            keys, values = cache.append(layer, k[start:end].transpose(0, 1), v[start:end].transpose(0, 1))
            total = keys.shape[1]
            qs = q[start:end].transpose(0, 1)[None]  # [1, heads, n, D]
            mask = None
            if seq_len > 1:  # query i sits at position total - seq_len + i and sees keys up to it
                rows = torch.arange(seq_len, device=q.device)[:, None] + (total - seq_len)
                mask = torch.arange(total, device=q.device)[None, :] <= rows
            o = F.scaled_dot_product_attention(
                qs, keys[None], values[None], attn_mask=mask, scale=self.scale, enable_gqa=True
            )
            outs.append(o[0].transpose(0, 1).reshape(seq_len, -1))
            start = end
        return torch.cat(outs)
