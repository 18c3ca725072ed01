"""Seeded weight initialisation for tiny checkpoints (independent of transformers' init)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

# Biases and other 1-D parameters that are not norms.
BIAS_STD = 0.02


def _is_norm(module: nn.Module) -> bool:
    # LayerNorm, RMSNorm and the models' own *RMSNorm classes.
    return "norm" in type(module).__name__.lower()


def _std(name: str, param: torch.Tensor) -> float:
    if param.ndim == 1:
        return BIAS_STD
    if name.endswith("embed_tokens.weight"):
        return 1.0
    if ".experts." in name and param.ndim == 3:
        # Stacked MoE expert matrices [num_experts, out, in]: fan_in is the last dim.
        return 1.0 / math.sqrt(param.shape[-1])
    # fan_in = everything but the output dim (Linear [out, in], Conv1d [out, in, k],
    # Conv3d [out, in, t, h, w]).
    return 1.0 / math.sqrt(param[0].numel())


@torch.no_grad()
def init_weights_(model: nn.Module, seed: int) -> None:
    """Overwrite every parameter of ``model`` in place from ``torch.Generator().manual_seed(seed)``.

    Norm weights become 1 and norm biases 0. Every other parameter is drawn N(0, std^2) in sorted
    parameter-name order, so the result depends only on (names, shapes, seed): token embeddings
    std 1, weight matrices std 1/sqrt(fan_in) (activations stay O(1) through the layers), biases
    std 0.02. With this scale, greedy decoding of the random model wanders over many ids; small
    uniform stds (0.02-0.1) made it repeat one or two tokens.
    """
    norm_params = {
        f"{module_name}.{param_name}" if module_name else param_name
        for module_name, module in model.named_modules()
        if _is_norm(module)
        for param_name, _ in module.named_parameters(recurse=False)
    }
    generator = torch.Generator(device="cpu").manual_seed(seed)
    for name, param in sorted(model.named_parameters()):
        if name in norm_params:
            param.fill_(1.0 if name.endswith("weight") else 0.0)
            continue
        values = torch.randn(param.shape, generator=generator, dtype=torch.float32)
        param.copy_((values * _std(name, param)).to(param.dtype))


def save_model(model: PreTrainedModel, out_dir: Path) -> None:
    """``model.save_pretrained(out_dir)`` as one ``model.safetensors``, readable like the rest.

    safetensors writes the file 0600; 0644 lets other users share a cache directory.
    """
    model.save_pretrained(out_dir)
    (out_dir / "model.safetensors").chmod(0o644)
