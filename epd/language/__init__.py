"""Language role: the engine that prefills and decodes requests whose embeddings arrived."""

from epd.language.config import EngineConfig
from epd.language.engine import LanguageEngine

__all__ = ["EngineConfig", "LanguageEngine"]
