"""Make transformers' vision and audio towers fast without forking them.

``prepare_tower(tower, mode)`` picks the tower's attention through transformers' registry and,
in ``auto`` mode on a GPU in half precision, swaps the hot spots measured on the H200 for fused
equivalents on that one tower instance: the Conv3d patch embedding (kernel = stride, so it is a
matrix product) becomes one ``F.linear``; Qwen2.5-VL's float32 RMSNorm chains become one Triton
kernel; its gated MLP becomes one gate-up product padded to an aligned width plus one SiLU-mul
pass; the vision rotary becomes one Triton launch for q and k (swapped into the tower's modeling
module only while this tower runs). ``vision_tower_kwargs`` computes on the host, from the grids,
the indexing tensors the towers would otherwise build per call on the device (with host syncs):
the towers pop them from their kwargs.
"""

from __future__ import annotations

import contextlib
import sys
import types
from typing import Any

import torch
import torch.nn.functional as F

from epd_kernels import attention
from epd_kernels.fused import add_rms_norm
from epd_kernels.vision_ops import rms_norm, rotary, silu_mul

TOWER_MODES = ("auto", "varlen", "sdpa", "eager")
_IMPLEMENTATION = {"auto": attention.AUTO, "varlen": attention.VARLEN, "sdpa": "sdpa", "eager": "eager"}


def resolve_mode(mode: str, device: torch.device, dtype: torch.dtype) -> str:
    """``auto`` is epd's path on CUDA in bf16/fp16 and transformers' SDPA otherwise (CPU, float32)."""
    if mode not in TOWER_MODES:
        raise ValueError(f"tower attention {mode!r} is not one of {', '.join(TOWER_MODES)}")
    if mode == "auto" and not (device.type == "cuda" and dtype in (torch.bfloat16, torch.float16)):
        return "sdpa"
    return mode


def prepare_tower(tower: torch.nn.Module, mode: str, device: torch.device, dtype: torch.dtype) -> str:
    """Set ``tower``'s attention for ``mode`` (``TOWER_MODES``) and, for epd's ``auto`` path, fuse its
    element-wise hot spots; returns the mode in effect."""
    mode = resolve_mode(mode, device, dtype)
    if getattr(tower, "_epd_tower_mode", None) is not None:
        raise ValueError("prepare_tower was already applied to this tower")
    attention.register()
    set_attention(tower, _IMPLEMENTATION[mode])
    if mode == "auto":
        _fuse(tower)
    tower._epd_tower_mode = mode
    return mode


def set_attention(tower: torch.nn.Module, implementation: str) -> None:
    """Point every config inside ``tower`` at ``implementation`` (a registered name, ``sdpa`` or ``eager``).

    Set on the configs directly: ``set_attn_implementation`` would try to import flash-attn for any
    name containing "flash", and epd's names contain it so that the towers hand them ``cu_seqlens``.
    """
    from transformers import PreTrainedConfig

    for module in tower.modules():
        config = getattr(module, "config", None)
        if isinstance(config, PreTrainedConfig):
            config._attn_implementation = implementation


def uses_epd_path(tower: torch.nn.Module) -> bool:
    """Whether ``tower`` runs epd's attention (and so takes host-computed indexing kwargs)."""
    return getattr(tower, "_epd_tower_mode", "sdpa") in ("auto", "varlen")


def _fuse(tower: torch.nn.Module) -> None:
    for module in tower.modules():
        proj = getattr(module, "proj", None)
        if isinstance(proj, torch.nn.Conv3d) and proj.kernel_size == proj.stride and proj.padding == (0, 0, 0):
            module.forward = types.MethodType(_patch_embed_forward, module)
        if type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon"):
            module.forward = types.MethodType(_rms_norm_forward, module)
        gated = all(hasattr(module, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn"))
        if gated and type(module.act_fn).__name__ in ("SiLU", "SiLUActivation"):
            _fuse_gated_mlp(module)
        if _is_rms_block(module):
            module.forward = types.MethodType(_block_forward, module)
    if hasattr(sys.modules[type(tower).__module__], "apply_rotary_pos_emb_vision"):
        tower.forward = types.MethodType(_forward_with_fused_rotary, tower)


def _is_rms_block(module: torch.nn.Module) -> bool:
    """A pre-norm vision block with RMSNorms and a gated MLP (Qwen2.5-VL's): its adds can be fused."""
    parts = [getattr(module, name, None) for name in ("norm1", "norm2", "attn", "mlp")]
    return (
        all(part is not None for part in parts)
        and all(type(norm).__name__.endswith("RMSNorm") for norm in parts[:2])
        and hasattr(module.mlp, "gate_proj")
    )


def _block_forward(
    self: Any,
    hidden_states: torch.Tensor,
    cu_seqlens: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """The block's ``h += attn(norm1(h)); h += mlp(norm2(h))`` with both residual adds fused away: the
    first into the second norm (one kernel writes norm2's input and output), the second into the down
    projection's GEMM (its C operand, with the down bias already added to it by that kernel)."""
    attn = self.attn(
        self.norm1(hidden_states), cu_seqlens=cu_seqlens, position_embeddings=position_embeddings, **kwargs
    )
    mlp, norm = self.mlp, self.norm2
    fused = getattr(mlp, "_epd_gate_up", None)
    if fused is None or hidden_states.dim() != 2:
        hidden_states = hidden_states + attn
        return hidden_states + mlp(norm(hidden_states))
    # writes h + attn (+ the down bias) into attn's buffer, a temporary of this block
    normed, summed = add_rms_norm(hidden_states, attn, norm.weight, norm.variance_epsilon, bias=mlp.down_proj.bias)
    weight, bias = fused
    act = silu_mul(F.linear(normed, weight, bias))
    return summed.addmm_(act, mlp._epd_down.t())


def _patch_embed_forward(self: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Conv3d with kernel = stride over pre-cut patches is one matrix product with the flattened kernel."""
    weight = self.proj.weight  # [C_out, C_in, T, P, P]
    patches = pixels.reshape(-1, weight[0].numel()).to(weight.dtype)  # [N, C_in*T*P*P], the conv's order
    return F.linear(patches, weight.reshape(weight.shape[0], -1), self.proj.bias)


def _fuse_gated_mlp(mlp: Any, multiple: int = 64) -> None:
    """Gate and up as one matrix product, their width padded to ``multiple`` (Qwen2.5-VL's 3420 →
    3456: bf16 rows of 3420 are not 16-byte aligned, which sends cuBLAS to a ~3x slower kernel), then
    ``silu(gate) * up`` in one pass and down over the padded width. The padded units have zero
    weights and bias, so they add exact zeros. The modules' weights become views of the fused ones."""
    gate, up, down = mlp.gate_proj, mlp.up_proj, mlp.down_proj
    inter = gate.out_features
    width = -(-inter // multiple) * multiple
    fused = gate.weight.new_zeros(2 * width, gate.in_features)  # [2W, C]: gate rows, then up rows
    fused[:inter], fused[width : width + inter] = gate.weight, up.weight
    bias = None
    if gate.bias is not None:
        bias = gate.bias.new_zeros(2 * width)
        bias[:inter], bias[width : width + inter] = gate.bias, up.bias
    down_w = down.weight.new_zeros(down.out_features, width)  # [C, W]
    down_w[:, :inter] = down.weight
    with torch.no_grad():
        gate.weight.data, up.weight.data = fused[:inter], fused[width : width + inter]
        down.weight.data = down_w[:, :inter]
        if bias is not None:
            gate.bias.data, up.bias.data = bias[:inter], bias[width : width + inter]
    mlp._epd_gate_up = (fused, bias)
    mlp._epd_down = down_w
    mlp.forward = types.MethodType(_gated_mlp_forward, mlp)


def _gated_mlp_forward(self: Any, hidden: torch.Tensor) -> torch.Tensor:
    weight, bias = self._epd_gate_up
    gate_up = F.linear(hidden, weight, bias)  # [N, 2W]
    return F.linear(silu_mul(gate_up), self._epd_down, self.down_proj.bias)


def _rms_norm_forward(self: Any, hidden: torch.Tensor) -> torch.Tensor:
    return rms_norm(hidden, self.weight, self.variance_epsilon)


def _forward_with_fused_rotary(self: Any, *args: Any, **kwargs: Any) -> Any:
    """The tower's own forward, with its modeling module's vision rotary swapped for the fused one."""
    with _swapped(sys.modules[type(self).__module__], "apply_rotary_pos_emb_vision", rotary):
        return type(self).forward(self, *args, **kwargs)


@contextlib.contextmanager
def _swapped(module: types.ModuleType, name: str, value: Any):
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


def vision_tower_kwargs(tower: torch.nn.Module, grid_thw: torch.Tensor, device: torch.device) -> dict[str, Any]:
    """The grid-derived tensors of a Qwen vision tower call (positions, segment boundaries, windows,
    position-table taps), built on the host from ``grid_thw`` [n, 3] and copied without a sync."""
    from transformers import vision_utils as vu

    grid = grid_thw.detach().to("cpu", torch.long)
    merge = tower.spatial_merge_size
    cu_seqlens = vu.get_vision_cu_seqlens(grid)
    out: dict[str, Any] = {
        "position_ids": vu.get_vision_position_ids(grid, merge),
        "cu_seqlens": cu_seqlens,
        "max_seqlen": _max_len(cu_seqlens),
    }
    if hasattr(tower, "fullatt_block_indexes"):  # Qwen2.5-VL: window attention outside the full blocks
        window_index, cu_window = vu.get_vision_window_index(grid, merge, tower.window_size, tower.patch_size)
        out.update(window_index=window_index, cu_window_seqlens=cu_window, max_window_seqlen=_max_len(cu_window))
    if hasattr(tower, "num_grid_per_side"):  # Qwen3-VL / Omni: learned position table resampled per grid
        indices, weights = vu.get_vision_interpolation_indices_and_weights(
            grid,
            num_grid_per_side=tower.num_grid_per_side,
            mode=tower.interpolation_mode,
            align_corners=tower.interpolation_align_corners,
            spatial_merge_size=merge,
        )
        out.update(interp_indices=indices, interp_weights=weights)
    return {key: _to_device(val, device) for key, val in out.items()}


def _max_len(cu_seqlens: torch.Tensor) -> int:
    return int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) if cu_seqlens.numel() > 1 else 0


def _to_device(value: Any, device: torch.device) -> Any:
    if not isinstance(value, torch.Tensor) or device.type == "cpu":
        return value
    return value.pin_memory().to(device, non_blocking=True)
