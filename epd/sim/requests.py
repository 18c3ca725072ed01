"""Workload requests as the simulator sees them: prompt token ids and media items with sizes.

The workload is built by ``epd.workload.build_workload`` itself (the same generators, arrival
processes and seeds as ``epd.run``), without writing media: synthetic parts carry their size
beside the url. Prompts are sized one of two ways (``sim.tokenize``):

- ``exact``: the checkpoint's chat template and tokenizer, the calls the frontend makes;
- ``words``: the profile's template ids around the parts (``frontend.prompt``), one token per word
  of text (a synthetic prompt of ``input_len`` tokens is ``input_len`` words) and the family's
  placeholder ids per item. Word ids are stable hashes, so repeated text shares prefix blocks.

Items are sized as the frontend sizes them (``epd.scheduler.cost.estimate_tokens`` with the
checkpoint's image processor: exact for images, estimated for video) and hashed by content: by the
file's bytes when it exists, else by its path (a synthetic file's name encodes its content).
"""

from __future__ import annotations

import hashlib
import os
import zlib
from dataclasses import dataclass, field
from typing import Any

from epd.frontend.chat import to_template_messages
from epd.scheduler.config import SchedulerConfig
from epd.scheduler.content_hash import ContentHasher
from epd.scheduler.cost import estimate_tokens
from epd.sim.costs import MediaSize
from epd.workload import WorkloadRequest

WORD_ID_BASE = 1000
WORD_ID_RANGE = 100_000


@dataclass(eq=False, kw_only=True)
class SimItem:
    """One media item of a simulated request."""

    index: int
    modality: str
    source: str
    tokens: int
    """Tokens the tower produces (what the encoder reports)."""
    est_tokens: int
    """The frontend's estimate (the policies' unit of load)."""
    size: MediaSize
    content_hash: str


@dataclass(eq=False, kw_only=True)
class SimRequest:
    """One request of the simulated workload."""

    req: WorkloadRequest
    prompt_ids: list[int]
    """The frontend's tokens: one unexpanded placeholder span per item."""
    items: list[SimItem] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.req.id


class PromptSizer:
    """Turns workload requests into ``SimRequest``s (see the module docstring)."""

    def __init__(self, profile: dict, scheduler: SchedulerConfig, mode: str, processor: Any = None) -> None:
        prompt = profile["frontend"]["prompt"]
        self.prefix = list(prompt["prefix_ids"])
        self.suffix = list(prompt["suffix_ids"])
        self.placeholders = {m: list(ids) for m, ids in prompt["placeholder_ids"].items()}
        self.scheduler = scheduler
        self.mode = mode
        self.processor = processor
        self.image_processor = getattr(processor, "image_processor", None)
        self.hasher = ContentHasher()
        self._estimates: dict[tuple, int] = {}
        self._words: dict[str, int] = {}
        if mode == "exact" and processor is None:
            raise ValueError("sim.tokenize=exact needs the checkpoint's processor (the profile's model.checkpoint)")

    def build(self, req: WorkloadRequest) -> SimRequest:
        messages, media = to_template_messages(req.messages)
        if self.mode == "exact":
            text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = self._word_prompt(messages)
        items = [self._item(i, ref) for i, ref in enumerate(media)]
        return SimRequest(req=req, prompt_ids=ids, items=items)

    def _word_prompt(self, messages: list[dict]) -> list[int]:
        ids = list(self.prefix)
        for msg in messages:
            content = msg["content"]
            for part in [{"type": "text", "text": content}] if isinstance(content, str) else content:
                if part["type"] == "text":
                    ids += [self._word_id(w) for w in part["text"].split()]
                elif part["type"] in self.placeholders:
                    ids += self.placeholders[part["type"]]
                else:
                    raise ValueError(f"the profile's model takes no {part['type']} input")
        return ids + self.suffix

    def _word_id(self, word: str) -> int:
        wid = self._words.get(word)
        if wid is None:
            wid = WORD_ID_BASE + zlib.crc32(word.encode()) % WORD_ID_RANGE
            if len(self._words) < 1 << 16:
                self._words[word] = wid
        return wid

    def _item(self, index: int, ref: Any) -> SimItem:
        hints = dict(ref.hints)
        exists = not ref.source.startswith(("http://", "https://", "data:")) and os.path.exists(_path(ref.source))
        if ref.modality == "image" and not ("width" in hints and "height" in hints) and exists:
            from PIL import Image

            with Image.open(_path(ref.source)) as img:
                hints["width"], hints["height"] = img.size
        key = (ref.modality, tuple(sorted(hints.items())))
        tokens = self._estimates.get(key)
        if tokens is None:
            tokens = self._estimates[key] = estimate_tokens(ref.modality, hints, self.scheduler, self.image_processor)
        content_hash = (self.hasher.hash(ref.source) if exists else None) or _digest(ref.source)
        return SimItem(
            index=index,
            modality=ref.modality,
            source=ref.source,
            tokens=tokens,
            est_tokens=tokens,
            size=MediaSize(modality=ref.modality, tokens=tokens, size=_size_unit(ref.modality, hints, tokens)),
            content_hash=content_hash,
        )


def _size_unit(modality: str, hints: dict, tokens: int) -> float:
    """Pixels of an image, seconds x pixels of a video, seconds of audio (``epd.profile.schema``)."""
    pixels = float(hints.get("width", 0)) * float(hints.get("height", 0))
    if modality == "image":
        return pixels or tokens * 784.0
    if modality == "video":
        return float(hints.get("seconds", 4.0)) * (pixels or 640 * 360)
    return float(hints.get("seconds", tokens / 25.0))


def _path(source: str) -> str:
    from urllib.parse import unquote, urlparse

    return unquote(urlparse(source).path) if source.startswith("file://") else source


def _digest(source: str) -> str:
    return hashlib.blake2b(source.encode(), digest_size=16).hexdigest()
