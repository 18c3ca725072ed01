"""Model families by name, and detection of a checkpoint's family from its config.json."""

from __future__ import annotations

import json
from pathlib import Path

from epd.models.base import ModelFamily
from epd.registry import Registry

FAMILIES: Registry[ModelFamily] = Registry("model family", "epd.models.families")


def detect_family(ckpt: Path) -> ModelFamily:
    """The family serving ``ckpt``; any other architecture fails naming the supported ones."""
    config_file = Path(ckpt) / "config.json"
    try:
        archs = json.loads(config_file.read_text()).get("architectures") or []
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {config_file}: {exc}") from exc
    supported = {}
    for name in FAMILIES:
        family = FAMILIES.get(name)()
        for arch in family.architectures:
            supported[arch] = family
    for arch in archs:
        if arch in supported:
            return supported[arch]
    raise ValueError(
        f"{ckpt}: architecture {archs or 'unknown'} is not supported; epd serves "
        + ", ".join(f"{arch} ({fam.name})" for arch, fam in sorted(supported.items()))
    )
