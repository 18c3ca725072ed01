"""The frontend's part of a profile: the chat template's ids around a prompt, and the time to tokenize."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from epd.models import LanguageSide
from epd.profile.fit import fit_linear
from epd.profile.timing import typical_time
from epd.workload.text import make_prompt

TEXT_TOKENS = (0, 32, 128, 512, 2048)
QUICK_TEXT_TOKENS = (0, 128)


def tokenize(processor: Any, messages: list[dict]) -> list[int]:
    """What ``Frontend.tokenize`` does: the chat template, then the tokenizer."""
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return processor.tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_ids(processor: Any, side: LanguageSide, modalities: tuple[str, ...]) -> dict:
    """The template's ids before and after a user turn's parts, each modality's placeholder span and
    the id in it that the encoder's span repeats once per embedding."""
    first = modalities[0]
    ids = tokenize(processor, [{"role": "user", "content": [{"type": first}]}])
    span = side.placeholder_span(first)
    at = next(i for i in range(len(ids)) if ids[i : i + len(span)] == span)
    placeholders = {m: list(side.placeholder_span(m)) for m in modalities}
    pads = {}
    for m in modalities:
        token = getattr(processor, f"{m}_token", None)
        pad = processor.tokenizer.convert_tokens_to_ids(token) if isinstance(token, str) else None
        pads[m] = pad if pad in placeholders[m] else placeholders[m][len(placeholders[m]) // 2]
    return {
        "prefix_ids": ids[:at],
        "suffix_ids": ids[at + len(span) :],
        "placeholder_ids": placeholders,
        "pad_ids": pads,
    }


def measure_frontend(
    processor: Any, side: LanguageSide, modalities: tuple[str, ...], quick: bool, repeats: int
) -> dict:
    """``prompt`` (``prompt_ids``) and ``tokenize_s``: seconds per request vs its prompt tokens."""
    rng = np.random.default_rng(0)
    points = []
    for n in QUICK_TEXT_TOKENS if quick else TEXT_TOKENS:
        text = make_prompt(rng, n, processor.tokenizer)
        content = [{"type": modalities[0]}] + ([{"type": "text", "text": text}] if text else [])
        messages = [{"role": "user", "content": content}]
        length = len(tokenize(processor, messages))
        seconds = typical_time(lambda m=messages: tokenize(processor, m), torch.device("cpu"), repeats)
        points.append([length, seconds])
    return {
        "prompt": prompt_ids(processor, side, modalities),
        "tokenize_s": {"points": points, "fit": fit_linear([p[0] for p in points], [p[1] for p in points])},
    }
