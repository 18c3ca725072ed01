"""OpenAI chat messages → the chat-template form of HF processors, with the media pulled out in order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# OpenAI part type → (modality, key holding {"url": ...})
MEDIA_PARTS = {
    "image_url": ("image", "image_url"),
    "video_url": ("video", "video_url"),
    "audio_url": ("audio", "audio_url"),
}
AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg", "m4a")
HINT_KEYS = ("width", "height", "seconds", "frames", "num_tokens")
"""Optional numbers beside a part's ``url`` that size the item before it is decoded (``epd.scheduler.cost``)."""


@dataclass(frozen=True)
class MediaRef:
    modality: str
    source: str
    hints: dict[str, float] = field(default_factory=dict, compare=False)
    """Size hints the request gave for this item (``HINT_KEYS``), e.g. ``{"width": 1920, "height": 1080}``."""


def to_template_messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[MediaRef]]:
    """Messages whose media parts are bare ``{"type": "image"}`` placeholders, and the media in prompt order."""
    out, media = [], []
    for turn, msg in enumerate(messages):
        role, content = msg.get("role"), msg.get("content")
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"message {turn}: role {role!r} is not system, user or assistant")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise ValueError(f"message {turn}: content must be a string or a list of parts")
        parts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                parts.append({"type": "text", "text": part.get("text", "")})
            elif kind == "input_audio":  # base64 audio inline: the same path as an audio_url data: URI
                audio = part.get("input_audio") or {}
                fmt, data = audio.get("format"), audio.get("data")
                if fmt not in AUDIO_FORMATS or not isinstance(data, str):
                    raise ValueError(
                        f"message {turn}: input_audio needs base64 'data' and a 'format' in {AUDIO_FORMATS}"
                    )
                parts.append({"type": "audio"})
                media.append(MediaRef("audio", f"data:audio/{fmt};base64,{data}"))
            elif kind in MEDIA_PARTS:
                modality, key = MEDIA_PARTS[kind]
                ref = part.get(key)
                url = ref.get("url") if isinstance(ref, dict) else ref
                if not isinstance(url, str) or not url:
                    raise ValueError(f"message {turn}: {kind} part without a url")
                parts.append({"type": modality})
                media.append(MediaRef(modality, url, _hints(ref)))
            else:
                raise ValueError(f"message {turn}: unsupported content part type {kind!r}")
        out.append({"role": role, "content": parts})
    return out, media


def _hints(ref: Any) -> dict[str, float]:
    if not isinstance(ref, dict):
        return {}
    return {
        k: ref[k]
        for k in HINT_KEYS
        if isinstance(ref.get(k), int | float) and not isinstance(ref[k], bool) and ref[k] > 0
    }
