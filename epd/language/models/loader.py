"""Load a Qwen language model's weights straight from a checkpoint's safetensors (or any iterable of
named tensors, such as an HF model's state dict) onto ``QwenDecoder``'s fused parameters, without
building the HF model. Only the language model's tensors are read; towers and talkers are skipped.

Checkpoint names differ by family and transformers version (``model.layers.*`` for Qwen2.5-VL on
the hub, ``model.language_model.*`` for Qwen3-VL, ``language_model.model.*`` for Qwen2-Audio,
``thinker.model.*`` for Qwen3-Omni); all reduce to the same names below a known prefix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from epd.language.models.qwen import QwenDecoder
from epd.models.checkpoint import module_name, read_tensors

PREFIXES = ("thinker.model.", "thinker.", "model.language_model.", "language_model.model.", "language_model.", "model.")
ROOTS = ("layers", "embed_tokens", "norm", "lm_head")


def lm_name(name: str) -> str | None:
    """The language-model name of a checkpoint tensor (``layers.0.self_attn.q_proj.weight``), or None."""
    return module_name(name, (*PREFIXES, ""), ROOTS)


def checkpoint_tensors(ckpt: Path, device: torch.device, shard=None) -> Iterator[tuple[str, torch.Tensor]]:
    """The language-model tensors of a safetensors checkpoint, read one at a time onto ``device``;
    ``shard(name, slice)`` (tensor parallelism) reads only a rank's part of each."""
    for _, key, _, tensor in read_tensors(ckpt, lm_name, device, shard):
        yield key, tensor


_LAYER = re.compile(r"layers\.(\d+)\.(.+)")
_EXPERT = re.compile(r"mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight")


def load_weights(model: QwenDecoder, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Copy ``tensors`` (checkpoint or HF-module names; see ``lm_name``) into ``model``; every parameter must be covered."""
    params = dict(model.named_parameters())
    covered = {name: 0 for name in params}
    spec = model.spec
    q, kv = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    inter = spec.moe_intermediate_size
    for full_name, tensor in tensors:
        name = lm_name(full_name)
        if name is None:  # a tower's or talker's tensor
            continue
        target, index = _target(name, q, kv, spec.intermediate_size, inter)
        if target is None:
            continue
        if target not in params:
            if target == "lm_head.weight" and spec.tie_embeddings:
                continue
            raise ValueError(f"checkpoint tensor {name} has no place in epd's decoder ({target})")
        param = params[target]
        dst = param.data[index] if index is not None else param.data
        src = _fused_expert_layout(name, tensor, dst.shape)
        if src.shape != dst.shape:
            raise ValueError(f"checkpoint tensor {name} has shape {tuple(src.shape)}, expected {tuple(dst.shape)}")
        dst.copy_(src)
        covered[target] += dst.numel()
    missing = [name for name, n in covered.items() if n != params[name].numel()]
    if missing:
        raise ValueError(
            f"the checkpoint does not provide {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )


def param_view(model: QwenDecoder, name: str) -> torch.Tensor | None:
    """The part of ``model``'s parameters that a checkpoint or HF-module tensor ``name`` fills, as a
    view sharing its storage (None: a tensor epd does not keep). An HF model can be built over these
    views without a second copy of the weights (benchmarks)."""
    lm = lm_name(name)
    if lm is None:
        return None
    spec = model.spec
    target, index = _target(
        lm, spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim, spec.intermediate_size,
        spec.moe_intermediate_size,
    )  # fmt: skip
    param = dict(model.named_parameters()).get(target)
    if param is None:
        return None
    return param.data[index] if index is not None else param.data


def _target(name: str, q: int, kv: int, inter: int, moe_inter: int) -> tuple[str | None, tuple | None]:
    """epd's parameter and the slice of it that ``name`` fills."""
    m = _LAYER.fullmatch(name)
    if m is None:
        return name, None
    layer, rest = m.group(1), m.group(2)
    pre = f"layers.{layer}."
    proj = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
    if proj:
        start = {"q": 0, "k": q, "v": q + kv}[proj.group(1)]
        size = q if proj.group(1) == "q" else kv
        return pre + f"self_attn.qkv_proj.{proj.group(2)}", (slice(start, start + size),)
    mlp = re.fullmatch(r"mlp\.(gate|up)_proj\.weight", rest)
    if mlp:
        start = 0 if mlp.group(1) == "gate" else inter
        return pre + "mlp.gate_up_proj.weight", (slice(start, start + inter),)
    expert = _EXPERT.fullmatch(rest)
    if expert:
        e, which = int(expert.group(1)), expert.group(2)
        if which == "down":
            return pre + "mlp.w2", (e,)
        start = 0 if which == "gate" else moe_inter
        return pre + "mlp.w13", (e, slice(start, start + moe_inter))
    if rest == "mlp.experts.gate_up_proj":
        return pre + "mlp.w13", None
    if rest == "mlp.experts.down_proj":
        return pre + "mlp.w2", None
    return name, None


def _fused_expert_layout(name: str, tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Fused expert tensors are stored [E, H, 2I] / [E, I, H] on the hub and [E, 2I, H] / [E, H, I] by
    transformers 5: transpose when the stored shape is not epd's (as transformers itself decides)."""
    if name.endswith(("experts.gate_up_proj", "experts.down_proj")) and tensor.shape != shape:
        return tensor.transpose(1, 2)
    return tensor


@torch.no_grad()
def init_random(model: QwenDecoder, seed: int = 0, std: float = 0.02) -> None:
    """Random weights in place (``model.random_init``): normal(0, std) matrices, unit norms, zero biases."""
    gen = torch.Generator(device=model.embed_table.device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("bias"):
            param.zero_()
        elif param.dim() == 1:
            param.fill_(1.0)
        else:
            param.normal_(0.0, std, generator=gen)
