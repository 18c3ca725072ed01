"""The encoder's modules alone: built from the checkpoint's config, weights read from its safetensors.

An encoder needs only its towers (and the few modules ``encode`` uses beside them), never the
language model: ``build_towers`` constructs just those, directly on the target device in the target
dtype, and ``load_tower_weights`` fills them from the checkpoint reading only the towers' tensors.
Each module's name is its checkpoint root (``visual``, ``audio_tower``, ``multi_modal_projector``),
so a checkpoint key maps to a parameter by dropping one of ``TOWER_PREFIXES``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from epd.models.checkpoint import TOWER_PREFIXES, module_name, read_tensors, safetensors_files

TowerBuilders = dict[str, Callable[[torch.dtype], nn.Module]]
"""Checkpoint root → a function that builds that module in the given dtype (under the caller's device)."""


def build_towers(
    builders: TowerBuilders, device: torch.device | str, dtype: torch.dtype, random_init: bool
) -> nn.ModuleDict:
    """The modules of ``builders`` on ``device`` in ``dtype``: random weights (the models' own init) when
    ``random_init``, else left uninitialised for ``load_tower_weights`` (no init pass over memory that
    the checkpoint overwrites). On ``torch.device("meta")`` nothing is allocated (memory estimates).
    Buffers computed at construction (rotary frequencies, sinusoid tables) are real on a real device."""
    from transformers.initialization import no_init_weights

    skip_init = contextlib.nullcontext() if random_init else no_init_weights()
    with torch.device(device), _default_dtype(dtype), skip_init:
        towers = nn.ModuleDict({name: build(dtype) for name, build in builders.items()})
    return towers.eval()


def load_tower_weights(towers: nn.ModuleDict, ckpt: Path) -> list[str]:
    """Copy the towers' tensors of ``ckpt``'s safetensors into ``towers`` (read straight onto their
    device, cast to their dtype); returns the checkpoint keys read. Every parameter and persistent
    buffer must be found exactly once, and every checkpoint tensor under a tower's root must have a
    place: anything else is a ``ValueError`` naming the key and the file."""
    targets = towers.state_dict(keep_vars=True)  # tower name → parameter or persistent buffer
    device = next(iter(targets.values())).device
    roots = set(towers.keys())
    read: dict[str, tuple[Path, str]] = {}  # tower name → (file, key) it came from
    for file, key, name, tensor in read_tensors(ckpt, lambda key: module_name(key, TOWER_PREFIXES, roots), device):
        target = targets.get(name)
        if target is None:
            raise ValueError(
                f"{file}: tensor {key!r} lies under the encoder's {name.split('.')[0]!r} but has no place in it"
            )
        if name in read:
            raise ValueError(f"{file}: tensor {key!r} is a second copy of {read[name][1]!r} ({read[name][0].name})")
        if tuple(tensor.shape) != tuple(target.shape):
            raise ValueError(
                f"{file}: tensor {key!r} has shape {tuple(tensor.shape)}, the encoder expects {tuple(target.shape)}"
            )
        with torch.no_grad():
            target.copy_(tensor)
        read[name] = (file, key)
    missing = [name for name in targets if name not in read]
    if missing:
        files = ", ".join(f.name for f in safetensors_files(ckpt))
        shown = ", ".join(repr(m) for m in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(
            f"{ckpt}: no tensor for the encoder's {shown} in {files} "
            f"(looked for each name after the prefixes {', '.join(repr(p) for p in TOWER_PREFIXES if p)} or none)"
        )
    return [key for _, key in read.values()]


def module_bytes(modules: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (meta tensors count as what they would allocate)."""
    tensors = [*modules.parameters(), *modules.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def hf_tower(cls: Any, config: Any) -> Callable[[torch.dtype], nn.Module]:
    """Builder of a transformers tower class (a ``PreTrainedModel``) from its sub-config, as the full
    model builds it (``_from_config``: attention implementation and dtype set the same way)."""
    return lambda dtype: cls._from_config(config, dtype=dtype)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Modules that are not transformers models (the audio projector) are built in ``dtype`` too."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
