"""Model families behind a registry: loading, towers, placeholders and positions per family."""

from epd.models.base import (
    AUDIO,
    IMAGE,
    MODALITY_TYPE,
    TEXT,
    VIDEO,
    EncodedItem,
    ItemMeta,
    LanguageSide,
    MediaInput,
    ModelFamily,
    TowerEncoder,
)
from epd.models.checkpoint import resolve_checkpoint, torch_dtype
from epd.models.config import ModelConfig
from epd.models.registry import FAMILIES, detect_family

__all__ = [
    "AUDIO",
    "FAMILIES",
    "IMAGE",
    "MODALITY_TYPE",
    "TEXT",
    "VIDEO",
    "MediaInput",
    "TowerEncoder",
    "EncodedItem",
    "ItemMeta",
    "LanguageSide",
    "ModelConfig",
    "ModelFamily",
    "detect_family",
    "resolve_checkpoint",
    "torch_dtype",
]
