"""Checks a request must pass before the frontend sends anything for it; each failure names the field.

They run on every request whatever its source (workload file, synthetic workload, HTTP), so a value
no engine could take — a ``max_tokens`` of 2**64, a NaN temperature, a lone surrogate in a stop
string, a prompt longer than the model's context — fails that request alone, at once, with a message
that says what to change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from epd.protocol.messages import INT64_MAX, MAX_TOKENS
from epd.workload import WorkloadRequest

MAX_ID_CHARS = 256
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 1024
MAX_TEMPERATURE = 1e6


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What one request may ask for on this job."""

    max_context: int
    """Prompt + output tokens the model takes: ``engine.max_model_len`` capped by the model's own positions."""
    kv_tokens: int | None = None
    """KV-cache capacity (tokens) of the smallest language instance, once the ranks reported it."""


def check_request(req: WorkloadRequest, limits: Limits) -> None:
    """``ValueError`` naming the field, for anything the engines cannot take (lengths are checked later)."""
    check_text("id", req.id)
    if not 0 < len(req.id) <= MAX_ID_CHARS:
        raise ValueError(f"id must have 1 to {MAX_ID_CHARS} characters, it has {len(req.id)}")
    _check_int("max_tokens", req.max_tokens, 1, min(MAX_TOKENS, limits.max_context))
    _check_float("temperature", req.temperature, 0.0, MAX_TEMPERATURE)
    _check_int("top_k", req.top_k, 0, MAX_TOKENS)
    _check_float("top_p", req.top_p, 0.0, 1.0, low_open=True)
    if req.seed is not None:
        _check_int("seed", req.seed, -INT64_MAX - 1, INT64_MAX)
    if not isinstance(req.ignore_eos, bool):
        raise ValueError(f"ignore_eos must be true or false, got {req.ignore_eos!r}")
    if len(req.stop) > MAX_STOP_STRINGS:
        raise ValueError(f"stop has {len(req.stop)} strings; at most {MAX_STOP_STRINGS} are allowed")
    for i, stop in enumerate(req.stop):
        check_text(f"stop[{i}]", stop)
        if not 0 < len(stop) <= MAX_STOP_CHARS:
            raise ValueError(f"stop[{i}] must have 1 to {MAX_STOP_CHARS} characters")
    _check_strings("messages", req.messages)
    if req.prompt is not None:
        check_text("prompt", req.prompt)


def check_length(num_prompt_tokens: int, max_tokens: int, limits: Limits, what: str = "the prompt") -> None:
    """``ValueError`` with the numbers when prompt + ``max_tokens`` exceeds the context or the KV cache."""
    total = num_prompt_tokens + max_tokens
    if total > limits.max_context:
        raise ValueError(
            f"{what} has {num_prompt_tokens} tokens and max_tokens is {max_tokens}: {total} tokens, over the "
            f"context of {limits.max_context} (engine.max_model_len and the model's positions); shorten the "
            "prompt or lower max_tokens"
        )
    if limits.kv_tokens is not None and total > limits.kv_tokens:
        raise ValueError(
            f"{what} has {num_prompt_tokens} tokens and max_tokens is {max_tokens}: {total} tokens, more than the "
            f"KV cache holds ({limits.kv_tokens} tokens); shorten the prompt or lower max_tokens"
        )


def check_text(field: str, value: Any) -> None:
    """``ValueError`` unless ``value`` is a string that UTF-8 can encode (no lone surrogates)."""
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{field} is not valid Unicode (character {exc.start}: a lone surrogate)") from None


def _check_strings(field: str, value: Any) -> None:
    """Every string inside a JSON-like value (messages, parts, URLs) is valid Unicode."""
    if isinstance(value, str):
        check_text(field, value)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(f"{field} key", key)
            _check_strings(f"{field}.{key}", item)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_strings(f"{field}[{i}]", item)


def _check_int(field: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{field}={value} is out of range: it must be from {low} to {high}")


def _check_float(field: str, value: Any, low: float, high: float, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number, got {value!r}")
    if value > high or value < low or (low_open and value == low):
        interval = f"({low:g}, {high:g}]" if low_open else f"[{low:g}, {high:g}]"
        raise ValueError(f"{field}={value} is out of range: it must be in {interval}")
