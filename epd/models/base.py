"""What a model family provides to the encoder and language roles."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(kw_only=True)
class EncodedItem:
    """One media item after the tower: its embeddings and what the language side needs to place them."""

    embeds: torch.Tensor  # [num_tokens, hidden]
    grid_thw: list[int]
    num_tokens: int


@dataclass(kw_only=True)
class ItemMeta:
    """The language side's view of one encoded item (the embeddings travel separately)."""

    modality: str
    grid_thw: list[int]
    num_tokens: int


class VisionEncoder(ABC):
    """Runs the family's HF processor and tower for media items on one device."""

    @abstractmethod
    def encode_images(self, images: list[Any]) -> list[EncodedItem]:
        """PIL images → one ``EncodedItem`` each (one packed tower call)."""


class LanguageSide(ABC):
    """Family specifics of the language role: placeholders, positions and the decoder's modules."""

    text_model: torch.nn.Module  # embed_tokens, layers, norm, rotary_emb (HF module tree)
    lm_head: torch.nn.Module
    eos_token_ids: list[int]

    @abstractmethod
    def placeholder_id(self, modality: str) -> int:
        """Token id that stands for one media item's embeddings in the prompt."""

    @abstractmethod
    def expand(self, prompt_ids: list[int], items: list[ItemMeta]) -> tuple[torch.Tensor, torch.Tensor]:
        """One placeholder per item → ``num_tokens`` placeholders; returns ids [L] and modality types [L]."""

    @abstractmethod
    def positions(self, ids: torch.Tensor, mm_types: torch.Tensor, items: list[ItemMeta]) -> tuple[torch.Tensor, int]:
        """Rope positions [3, L] of the expanded prompt and the delta that continues them in decode."""


class ModelFamily(ABC):
    """One supported architecture: loading and the two role views."""

    name: str
    architectures: tuple[str, ...]
    modalities: tuple[str, ...]

    @abstractmethod
    def load_encoder(self, ckpt: Path, random_init: bool, device: torch.device, dtype: torch.dtype) -> VisionEncoder:
        """The tower and processor, on ``device``."""

    @abstractmethod
    def load_language(self, ckpt: Path, random_init: bool, device: torch.device, dtype: torch.dtype) -> LanguageSide:
        """The language model and its family specifics, on ``device``."""
