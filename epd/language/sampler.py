"""Batched sampling: greedy, temperature, top-k, top-p, each row with its own seed.

Random rows use the Gumbel-max trick with noise from a counter-based hash of (seed, step, token),
so a request's samples depend on its seed and position only, never on which other requests share
the batch, and no per-request generator state lives on the device. One host transfer per step
returns the tokens.
"""

from __future__ import annotations

import torch

_M1 = 0x9E3779B97F4A7C15 - (1 << 64)  # golden-ratio increment, as a signed int64
_M2 = 0xBF58476D1CE4E5B9 - (1 << 64)
_M3 = 0x94D049BB133111EB - (1 << 64)


def _shr(x: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of int64 (torch shifts arithmetically)."""
    return (x >> n) & ((1 << (64 - n)) - 1)


def uniform_noise(seeds: torch.Tensor, steps: torch.Tensor, vocab: int) -> torch.Tensor:
    """[S, V] float64 in (0, 1): splitmix64 of (seed, step, token index), a pure function of them."""
    idx = torch.arange(vocab, device=seeds.device, dtype=torch.int64)
    x = seeds[:, None] * _M1 + steps[:, None] * _M2 + idx[None, :]
    x = (x ^ _shr(x, 30)) * _M2
    x = (x ^ _shr(x, 27)) * _M3
    x = x ^ _shr(x, 31)
    return (_shr(x, 11).double() + 0.5) / float(1 << 53)


def sample(
    logits: torch.Tensor,  # [S, V] float32
    temperature: torch.Tensor,  # [S] float32, 0 = greedy
    top_k: torch.Tensor,  # [S] int64, 0 = off
    top_p: torch.Tensor,  # [S] float32, 1 = off
    seeds: torch.Tensor,  # [S] int64
    steps: torch.Tensor,  # [S] int64: index of the token being sampled
    any_random: bool,
    any_filter: bool,
) -> torch.Tensor:  # [S] int64
    greedy = logits.argmax(-1)
    if not any_random:
        return greedy
    scaled = logits / temperature.clamp_min(1e-5)[:, None]
    if any_filter:
        scaled = _filter(scaled, top_k, top_p)
    gumbel = -torch.log(-torch.log(uniform_noise(seeds, steps, logits.shape[1])))
    sampled = (scaled.double() + gumbel).argmax(-1)
    return torch.where(temperature > 0, sampled, greedy)


def _filter(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask to -inf every token outside each row's top-k and top-p nucleus."""
    values, order = scaled.sort(dim=-1, descending=True)
    vocab = scaled.shape[1]
    rank = torch.arange(vocab, device=scaled.device)[None, :]
    k = torch.where(top_k > 0, top_k, vocab)[:, None]
    probs = values.softmax(-1)
    before = probs.cumsum(-1) - probs  # probability mass strictly above each token
    drop = (rank >= k) | (before >= top_p[:, None])
    drop[:, 0] = False  # the most likely token always stays
    masked = values.masked_fill(drop, float("-inf"))
    return torch.empty_like(scaled).scatter_(1, order, masked)
