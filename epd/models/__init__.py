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
from epd.models.memory import MemoryEstimate, RankMemory, check_memory, estimate_memory
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
    "MemoryEstimate",
    "ModelConfig",
    "ModelFamily",
    "RankMemory",
    "check_memory",
    "detect_family",
    "estimate_memory",
    "resolve_checkpoint",
    "torch_dtype",
]
