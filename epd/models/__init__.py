"""Model families behind a registry: loading, towers, placeholders and positions per family."""

from epd.models.base import EncodedItem, ItemMeta, LanguageSide, ModelFamily, VisionEncoder
from epd.models.checkpoint import resolve_checkpoint, torch_dtype
from epd.models.config import ModelConfig
from epd.models.registry import FAMILIES, detect_family

__all__ = [
    "FAMILIES",
    "EncodedItem",
    "ItemMeta",
    "LanguageSide",
    "ModelConfig",
    "ModelFamily",
    "VisionEncoder",
    "detect_family",
    "resolve_checkpoint",
    "torch_dtype",
]
