"""What a model family provides to the encoder and language roles.

A media item's *span* is the run of prompt tokens that stands for it. The frontend's prompt holds
each item's placeholder span unexpanded (for Qwen2.5-VL images ``<|vision_start|><|image_pad|>
<|vision_end|>``); the encoder runs the family's own HF processor on that placeholder text alone,
which yields the expanded span (``token_ids``: pads, and for some families timestamps or
interleaved audio/video) together with the tower's inputs. The language side swaps each
placeholder span for the encoder's ``token_ids`` and places the embeddings on the span's
non-text rows, so no tokenizer runs on the language instance.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# transformers' mm_token_type_ids values; epd adds audio
TEXT, IMAGE, VIDEO, AUDIO = 0, 1, 2, 3
MODALITY_TYPE = {"image": IMAGE, "video": VIDEO, "audio": AUDIO}


@dataclass(kw_only=True)
class MediaInput:
    """One decoded media item, ready for the family's processor."""

    modality: str
    data: Any
    """Image (PIL, or uint8 tensor [3, H, W] for the device path), ``epd.media.VideoClip`` or ``epd.media.AudioClip``."""
    sampling: Any = None
    """Video: the ``epd.media.FrameSampling`` that chose the frames (the processor needs its fps)."""
    audio: Any = None
    """Video with ``media.use_audio_in_video``: its audio track (``epd.media.AudioClip``)."""
    features: Any = None
    """The family processor's output for this item, once ``TowerEncoder.preprocess`` ran (None: not yet)."""


@dataclass(kw_only=True)
class ItemMeta:
    """What the language side needs to place one item (its embeddings travel separately)."""

    modality: str
    token_ids: list[int]
    """The item's expanded span, replacing its placeholder span in the prompt."""
    token_types: list[int]
    """TEXT / IMAGE / VIDEO / AUDIO per span token; embeddings go to the non-text rows in order."""
    info: dict[str, Any] = field(default_factory=dict)
    """Family-specific inputs of the rope positions (``grid_thw``, ``second_per_grid``, ...)."""

    @property
    def num_embeds(self) -> int:
        return sum(1 for t in self.token_types if t != TEXT)


@dataclass(kw_only=True)
class EncodedItem:
    """One media item after the tower."""

    meta: ItemMeta
    tensors: dict[str, torch.Tensor]
    """``embeds`` [n, H] for the span rows of the item's own modality, in order; DeepStack families add
    ``deepstack`` [k, n_visual, H]; a video with its audio track adds ``audio_embeds`` for its audio rows."""


_LOCK_GUARD = threading.Lock()


class TowerEncoder(ABC):
    """Runs the family's HF processor and towers on one device."""

    modalities: tuple[str, ...]
    audio_sampling_rate: int = 16000
    """Rate the family's feature extractor wants audio at."""
    audio_in_video: bool = False
    """Whether the family can take a video's audio track with it (``media.use_audio_in_video``)."""
    processor: Any
    """The checkpoint's HF processor (its tokenizer part always runs on the host)."""
    device: torch.device
    """Where the towers run."""
    _device_preprocessor: Any = None  # epd.models.preprocess.DevicePreprocessor, or None: the host processor

    def frame_sampling(self, media: Any) -> Any:
        """Which video frames to decode (``epd.media.FrameSampling``); families with video override."""
        raise ValueError("this model takes no video")

    def set_preprocess_device(self, mode: str) -> None:
        """Where the processor's media math runs (``encoder.preprocess_device``: ``auto``, ``host`` or
        ``device``; ``epd.models.preprocess``). Until this is called it runs on the host."""
        from epd.models.preprocess import DevicePreprocessor, resolve_preprocess_device, runs_on_device

        where = resolve_preprocess_device(mode, self.device)
        if where is not None and mode == "auto" and not runs_on_device(self.processor):
            where = None  # a processor without torch math (PIL backend) stays on the host unless asked
        self._device_preprocessor = None if where is None else DevicePreprocessor(self.processor, where)

    @property
    def preprocess_device(self) -> torch.device | None:
        """Where ``preprocess`` resizes, normalises and patchifies (None: the HF processor on the host).
        With a device, decoded images are best handed over as uint8 tensors [3, H, W]."""
        prep = self._device_preprocessor
        return None if prep is None else prep.device

    def preprocess(self, inp: MediaInput) -> MediaInput:
        """Run the family's processor on one item (resize, normalise, patchify; mel features), keeping
        the output on ``inp.features``. The encoder's decode threads call this, so processing overlaps
        the tower calls; calls are serialised by a lock (the processor's tokenizer is not safe to
        share between threads), which still leaves the torch and PIL work free of the GIL. On the device
        path this returns once the item's device work is done (waited for outside the lock)."""
        lock = self.__dict__.get("_processor_lock")
        if lock is None:
            with _LOCK_GUARD:
                lock = self.__dict__.setdefault("_processor_lock", threading.Lock())
        prep = self._device_preprocessor
        if prep is not None:
            prep.stage(inp)  # the upload needs no lock
        with lock:
            inp.features = self._process(inp)
        if prep is not None:
            prep.synchronize()
        return inp

    def run_processor(self, **kwargs: Any) -> Any:
        """The family's processor on one item's placeholder ``text`` and media (the keyword arguments of
        ``processor(...)``): on the host, or with the media math on ``preprocess_device``."""
        if self._device_preprocessor is None:
            return self.processor(return_tensors="pt", **kwargs)
        return self._device_preprocessor(**kwargs)

    def _features(self, inputs: list[MediaInput]) -> list[Any]:
        """Each item's processor output: from ``preprocess`` where it ran, else computed now."""
        return [inp.features if inp.features is not None else self.preprocess(inp).features for inp in inputs]

    @abstractmethod
    def _process(self, inp: MediaInput) -> Any:
        """The family processor's output for one item (its expanded placeholder ids and tower inputs)."""

    @abstractmethod
    def encode(self, inputs: list[MediaInput]) -> list[EncodedItem]:
        """Decoded media → one ``EncodedItem`` each, same order (packed tower calls per modality)."""


class LanguageSide(ABC):
    """Family specifics of the language role: the decoder's shape, spans and positions. It holds no
    weights: the engine builds its own decoder from ``spec`` and reads ``weights``' safetensors."""

    spec: Any  # epd.language.models.DecoderSpec
    weights: Path | None
    """Checkpoint directory whose safetensors hold the language model; None = random init on the device."""
    hf_config: Any
    """The HF config the rope positions read (the thinker's for Qwen3-Omni)."""
    eos_token_ids: list[int]

    @abstractmethod
    def placeholder_span(self, modality: str) -> list[int]:
        """Token ids of one unexpanded item of ``modality`` in the frontend's prompt."""

    @abstractmethod
    def positions(
        self, ids: torch.Tensor, types: torch.Tensor, items: list[ItemMeta]
    ) -> tuple[torch.Tensor, int | float]:
        """Rope positions [3, L] of the expanded prompt and the delta that continues them in decode
        (Qwen3-Omni's are fractional)."""

    def placeholder_starts(self, prompt_ids: list[int], modalities: list[str]) -> list[int]:
        """Where each item's placeholder span starts in the unexpanded prompt, items in prompt order."""
        starts: list[int] = []
        pos = 0
        for modality in modalities:
            span = self.placeholder_span(modality)
            at = _find(prompt_ids, span, pos)
            if at < 0:
                raise ValueError(f"the prompt has no {modality} placeholder left for media item {len(starts)}")
            starts.append(at)
            pos = at + len(span)
        return starts

    def expand(self, prompt_ids: list[int], items: list[ItemMeta]) -> tuple[torch.Tensor, torch.Tensor]:
        """Replace each placeholder span (in prompt order) by its item's span; ids [L], types [L]."""
        ids: list[int] = []
        types: list[int] = []
        pos = 0
        for item, at in zip(items, self.placeholder_starts(prompt_ids, [it.modality for it in items]), strict=True):
            ids += prompt_ids[pos:at] + item.token_ids
            types += [TEXT] * (at - pos) + item.token_types
            pos = at + len(self.placeholder_span(item.modality))
        ids += prompt_ids[pos:]
        types += [TEXT] * (len(prompt_ids) - pos)
        return torch.tensor(ids, dtype=torch.long), torch.tensor(types, dtype=torch.int32)


def _find(seq: list[int], span: list[int], start: int) -> int:
    first, n = span[0], len(span)
    for i in range(start, len(seq) - n + 1):
        if seq[i] == first and seq[i : i + n] == span:
            return i
    return -1


class ModelFamily(ABC):
    """One supported architecture: loading and the two role views."""

    name: str
    architectures: tuple[str, ...]
    modalities: tuple[str, ...]

    @abstractmethod
    def tower_builders(self, config: Any) -> dict[str, Callable[[torch.dtype], torch.nn.Module]]:
        """The encoder's modules by checkpoint root (``visual``, ``audio_tower``, ...): the towers and
        whatever ``encode`` uses beside them, each built from the checkpoint's ``config`` in a dtype."""

    @abstractmethod
    def decoder_spec(self, config: Any) -> Any:
        """The language model's shape (``epd.language.models.DecoderSpec``) from the checkpoint's config."""

    def build_towers(
        self, config: Any, device: torch.device | str, dtype: torch.dtype, random_init: bool = False
    ) -> torch.nn.ModuleDict:
        """The encoder's modules alone on ``device`` (``meta``: nothing allocated); random weights when
        ``random_init``, else uninitialised until ``load_tower_weights`` fills them."""
        from epd.models.families.towers import build_towers

        return build_towers(self.tower_builders(config), device, dtype, random_init)

    def load_towers(
        self, ckpt: Path, random_init: bool, device: torch.device, dtype: torch.dtype
    ) -> tuple[Any, torch.nn.ModuleDict]:
        """The checkpoint's config and the encoder's modules on ``device``: weights read from ``ckpt``'s
        safetensors (the towers' tensors only; the language model is neither built nor read), or random."""
        from transformers import AutoConfig

        from epd.models.families.towers import load_tower_weights

        config = AutoConfig.from_pretrained(ckpt)
        towers = self.build_towers(config, device, dtype, random_init)
        if not random_init:
            load_tower_weights(towers, ckpt)
        return config, towers

    @abstractmethod
    def load_encoder(
        self, ckpt: Path, random_init: bool, device: torch.device, dtype: torch.dtype, tower_attention: str = "auto"
    ) -> TowerEncoder:
        """The towers and processor, on ``device``; ``tower_attention`` as ``ModelConfig.tower_attention``."""

    @abstractmethod
    def load_language(self, ckpt: Path, random_init: bool) -> LanguageSide:
        """The language side's specifics (config and tokenizer only: the engine loads the weights)."""
