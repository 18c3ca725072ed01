"""Output text as it grows, for streamed responses: incremental detokenization that never sends what
a later token or a stop string could take back.

Decoding a whole output at every token costs O(n²); instead the text of a short window of recent
tokens is decoded (vLLM's prefix/read offsets): the new text is what decoding the window yields
beyond what decoding its older part yielded, held back while it ends in an incomplete UTF-8
character (``\\ufffd``). With stop strings, the last ``max(len(stop)) - 1`` characters are held
back too: a stop string that later appears cannot start inside text already sent (if it did, it
would have been complete in that text, and the request would have ended there). At the end, the
frontend's final text (cut before its stop string) is authoritative: ``finish`` sends what is left
of it.
"""

from __future__ import annotations

from collections.abc import Callable

REPLACEMENT = "\ufffd"


class TextStream:
    """Turns token ids, as they arrive, into text deltas safe to send."""

    def __init__(self, decode: Callable[[list[int]], str], stop: list[str]) -> None:
        self.decode = decode
        self.holdback = max((len(s) for s in stop), default=1) - 1
        self.ids: list[int] = []
        self.prefix = 0  # window start: tokens before it are fully decoded into ``text``
        self.read = 0  # tokens whose text is in ``text``
        self.text = ""  # the decoded text so far (some of it maybe not sent yet)
        self.sent = 0  # characters of ``text`` already sent

    def add(self, token_ids: list[int]) -> str:
        """Text to send after ``token_ids`` (possibly empty)."""
        self.ids.extend(token_ids)
        before = self.decode(self.ids[self.prefix : self.read])
        window = self.decode(self.ids[self.prefix :])
        if len(window) > len(before) and not window.endswith(REPLACEMENT):
            self.text += window[len(before) :]
            self.prefix, self.read = self.read, len(self.ids)
        safe = len(self.text) - self.holdback
        if safe <= self.sent:
            return ""
        delta = self.text[self.sent : safe]
        self.sent = safe
        return delta

    def finish(self, final_text: str) -> str:
        """The rest of ``final_text`` (the request's whole output text) after what was sent."""
        sent = self.text[: self.sent]
        if not final_text.startswith(sent):  # a decoding quirk: never resend, never take back
            return ""
        self.sent = len(final_text)
        return final_text[len(sent) :]
