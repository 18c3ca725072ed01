"""Response bodies and stream chunks, shaped as OpenAI's chat and text completions.

``kind`` is ``chat`` (``chat.completion`` / ``chat.completion.chunk``, the text in ``message`` /
``delta``) or ``text`` (``text_completion``, the text in ``text``). With ``return_token_ids`` a
choice also carries the output ``token_ids`` (the whole output, or a chunk's new ones), as vLLM's do.
Streams are server-sent events: ``data: <json>`` per chunk, ``data: [DONE]`` at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import msgspec

from epd.metrics import RequestRecord

DONE = b"data: [DONE]\n\n"
_encode = msgspec.json.Encoder().encode


@dataclass
class Reply:
    """What every body of one request repeats."""

    id: str
    model: str
    kind: str  # "chat" | "text"
    return_token_ids: bool = False
    include_usage: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    def usage(self, record: RequestRecord) -> dict:
        prompt, completion = record.num_prompt_tokens, record.num_output_tokens
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def body(self, record: RequestRecord) -> bytes:
        """The whole response of a finished request."""
        choice: dict = {"index": 0, "finish_reason": record.finish_reason, "logprobs": None}
        if self.kind == "chat":
            choice["message"] = {"role": "assistant", "content": record.output_text}
        else:
            choice["text"] = record.output_text
        if self.return_token_ids:
            choice["token_ids"] = list(record.output_token_ids)
        obj = "chat.completion" if self.kind == "chat" else "text_completion"
        return _encode(self._envelope(obj, [choice], usage=self.usage(record)))

    def chunk(
        self, text: str, token_ids: list[int] | None = None, finish_reason: str | None = None, first: bool = False
    ) -> bytes:
        """One stream event: new text (and its token ids), or the end (``finish_reason``)."""
        choice: dict = {"index": 0, "finish_reason": finish_reason, "logprobs": None}
        if self.kind == "chat":
            choice["delta"] = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
        else:
            choice["text"] = text
        if self.return_token_ids and token_ids is not None:
            choice["token_ids"] = token_ids
        extra = {"usage": None} if self.include_usage else {}
        return _event(self._envelope(self._chunk_object, [choice], **extra))

    def usage_chunk(self, record: RequestRecord) -> bytes:
        """The last event before ``[DONE]`` with ``stream_options.include_usage``: no choices, the usage."""
        return _event(self._envelope(self._chunk_object, [], usage=self.usage(record)))

    @property
    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self.kind == "chat" else "text_completion"

    def _envelope(self, obj: str, choices: list[dict], **extra) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices, **extra}


def _event(payload: dict) -> bytes:
    return b"data: " + _encode(payload) + b"\n\n"


def error_event(message: str, status: int, kind: str) -> bytes:
    """An error inside a stream already started (its HTTP status went out as 200)."""
    return _event({"error": {"message": message, "type": kind, "param": None, "code": status}})
