"""Tensor parallelism as a transform of the decoder: shard it, then run every step in lockstep.

A language instance with ``tp: N`` spans N ranks. Each builds epd's own decoder from the *local* spec
(its share of the attention heads, of the MLP and expert widths, of the vocabulary), reads only its
shard of every checkpoint tensor (``shard``: safetensors slices, nothing else read), and ``apply``
adds the communication, leaving the decoder's code unchanged:

- attention: q heads split evenly; KV heads split too, or, when there are fewer KV heads than ranks,
  each rank keeps the one KV head its q heads use (replicated); ``o_proj`` is row-parallel: its
  output is all-reduced (a forward hook);
- MLP: ``gate_up_proj`` column-parallel, ``down_proj`` row-parallel, the MLP's output all-reduced;
  MoE: every expert's width split the same way, the router replicated, the output all-reduced;
- embedding and LM head vocab-parallel: a rank looks up (or scores) its rows of the vocabulary; the
  lookup is all-reduced and the logits all-gathered (``logits``), padded rows cut off.

Only the instance's leader schedules: before each forward it broadcasts the step (``Lockstep``), and
the other ranks (followers) run the same forward on their shards, so every collective matches. The
all-reduces are torch.distributed collectives on the instance's subgroup (NCCL on GPU, captured in
the decode CUDA graphs; gloo on CPU).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

_LAYER = re.compile(r"layers\.\d+\.(.+)")


@dataclass(frozen=True)
class TensorParallel:
    """This rank's place in its instance's tensor-parallel group (``size`` 1: no parallelism)."""

    size: int = 1
    rank: int = 0
    """Index of this rank in the group (0: the leader)."""
    group: Any = None
    """The group's process group (NCCL on GPU, gloo on CPU); None when ``size`` is 1."""
    meta_group: Any = None
    """A gloo group over the same ranks, for the small host-side step descriptions."""
    leader: int = 0
    """Global rank of the group's leader (the broadcasts' source)."""

    @property
    def enabled(self) -> bool:
        return self.size > 1

    # ---- the local shape --------------------------------------------------------------------------

    def local_spec(self, spec):
        """The decoder spec of this rank's shard; ``ValueError`` when the model does not split ``size`` ways."""
        if not self.enabled:
            return spec
        n = self.size
        problems = [
            f"{what} ({value})"
            for what, value in (
                ("attention heads", spec.num_heads),
                ("MLP width", spec.intermediate_size),
                ("expert width", spec.moe_intermediate_size),
            )
            if value % n
        ]
        kv = spec.num_kv_heads
        if (kv >= n and kv % n) or (kv < n and n % kv):
            problems.append(f"KV heads ({kv})")
        if problems:
            raise ValueError(f"tp={n} does not divide the model's {', '.join(problems)}: pick a tp that divides them")
        return dataclasses.replace(
            spec,
            num_heads=spec.num_heads // n,
            num_kv_heads=max(1, kv // n),
            intermediate_size=spec.intermediate_size // n,
            moe_intermediate_size=spec.moe_intermediate_size // n,
            vocab_size=-(-spec.vocab_size // n),
        )

    # ---- which part of each checkpoint tensor -------------------------------------------------------

    def shard(self, name: str, source, full_spec) -> torch.Tensor:
        """This rank's part of checkpoint tensor ``name`` (epd's language-model naming, see the loader),
        read from ``source`` (a safetensors slice or a ``TensorSource``) without reading the rest."""
        if not self.enabled:
            return source[:]
        shape = list(source.get_shape())
        m = _LAYER.fullmatch(name)
        rest = m.group(1) if m else name
        s, d = full_spec, full_spec.head_dim
        if rest.startswith("self_attn.q_proj."):
            return _rows(source, shape, _heads(self._part(s.num_heads), d))
        if rest.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
            return _rows(source, shape, _heads(self._kv_part(s), d))
        if rest == "self_attn.o_proj.weight":
            return _cols(source, shape, _heads(self._part(s.num_heads), d))
        if re.fullmatch(r"mlp\.(gate|up)_proj\.weight", rest) or re.fullmatch(
            r"mlp\.experts\.\d+\.(gate|up)_proj\.weight", rest
        ):
            return _rows(source, shape, self._part(shape[0]))
        if rest == "mlp.down_proj.weight" or re.fullmatch(r"mlp\.experts\.\d+\.down_proj\.weight", rest):
            return _cols(source, shape, self._part(shape[1]))
        if rest == "mlp.experts.gate_up_proj":  # [E, 2I, H] (transformers 5) or [E, H, 2I] (hub)
            dim = 1 if shape[1] == 2 * s.moe_intermediate_size else 2
            inter = s.moe_intermediate_size
            gate, up = self._part(inter), self._part(inter)
            up = slice(up.start + inter, up.stop + inter)
            return torch.cat([_along(source, shape, dim, gate), _along(source, shape, dim, up)], dim=dim)
        if rest == "mlp.experts.down_proj":  # [E, H, I] or [E, I, H]
            dim = 2 if shape[2] == s.moe_intermediate_size else 1
            return _along(source, shape, dim, self._part(s.moe_intermediate_size))
        if name in ("embed_tokens.weight", "lm_head.weight"):
            per = -(-shape[0] // self.size)
            rows = source[self.rank * per : min(shape[0], (self.rank + 1) * per)]
            if rows.shape[0] < per:  # the last shard of a vocabulary that does not split evenly
                rows = torch.cat([rows, rows.new_zeros(per - rows.shape[0], *rows.shape[1:])])
            return rows
        return source[:]  # norms, the router, q/k norms: every rank holds them whole

    def _part(self, total: int) -> slice:
        per = total // self.size
        return slice(self.rank * per, (self.rank + 1) * per)

    def _kv_part(self, spec) -> slice:
        kv = spec.num_kv_heads
        if kv >= self.size:
            return self._part(kv)
        head = self.rank // (self.size // kv)  # the KV head this rank's q heads read
        return slice(head, head + 1)

    # ---- communication --------------------------------------------------------------------------

    def apply(self, model: nn.Module) -> None:
        """Add the all-reduces and the vocab-parallel embedding to a decoder built from ``local_spec``."""
        if not self.enabled:
            return
        for layer in model.layers:
            layer.self_attn.o_proj.register_forward_hook(self._reduce_hook)
            layer.mlp.register_forward_hook(self._reduce_hook)
        old = model.embed_tokens
        model.embed_tokens = VocabParallelEmbedding(old.weight, self.rank * old.weight.shape[0], self)

    def _reduce_hook(self, module, inputs, output: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(output, group=self.group)
        return output

    def logits(self, local: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """[S, V/tp] of every rank → [S, V]: the full vocabulary's logits on every rank."""
        if not self.enabled:
            return local
        parts = [torch.empty_like(local) for _ in range(self.size)]
        dist.all_gather(parts, local.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)[:, :vocab_size]


class VocabParallelEmbedding(nn.Module):
    """This rank's rows [start, start + V/tp) of the embedding table; other ids look up zeros, and the
    ranks' lookups are summed."""

    def __init__(self, weight: nn.Parameter, start: int, tp: TensorParallel) -> None:
        super().__init__()
        self.weight = weight  # [V/tp, H]
        self.start = start
        self.tp = tp

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        inside = (local >= 0) & (local < self.weight.shape[0])
        out = nn.functional.embedding(local.clamp(0, self.weight.shape[0] - 1), self.weight)  # [N, H]
        out = out * inside.unsqueeze(-1).to(out.dtype)
        dist.all_reduce(out, group=self.tp.group)
        return out


class TensorSource:
    """A whole in-memory tensor posing as a safetensors slice (``get_shape`` and indexing)."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    def get_shape(self) -> list[int]:
        return list(self.tensor.shape)

    def __getitem__(self, index):
        return self.tensor[index]


def _heads(heads: slice, head_dim: int) -> slice:
    """The rows (or columns) of a range of attention heads."""
    return slice(heads.start * head_dim, heads.stop * head_dim)


def _rows(source, shape, part: slice) -> torch.Tensor:
    return source[part]


def _cols(source, shape, part: slice) -> torch.Tensor:
    return source[:, part]


def _along(source, shape, dim: int, part: slice) -> torch.Tensor:
    index = [slice(None)] * len(shape)
    index[dim] = part
    return source[tuple(index)]
