"""What every synthetic workload shares: request ids, prompt text, file names and the build loop.

A synthetic generator only says which media files request `index` of a kind (measured or warmup)
carries; `build_synthetic` adds ~`input_len` tokens of random text after the media parts, writes
the missing files in parallel and times the requests. Everything random is seeded by
(`cfg.seed`, stream, kind, index, ...), so one request's content never depends on how many
requests, items or other modalities the run has.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from epd.workload.arrivals import COUNT_STREAM, PROMPT_STREAM, assign_arrivals, seeded_rng
from epd.workload.base import WorkloadConfig, WorkloadRequest
from epd.workload.media import MediaSpec, media_part, size_hints_only, write_media
from epd.workload.text import make_prompt

MEASURED, WARMUP, POOL = 0, 1, 2  # seed keys telling measured, warmup and pooled media apart

SpecsOf = Callable[[int, int], list[MediaSpec]]
"""(kind, index) -> the media of that request, in the order its content parts list them."""


def build_synthetic(cfg: WorkloadConfig, tokenizer: Any, specs_of: SpecsOf) -> list[WorkloadRequest]:
    """`warmup_requests` warmup requests, then the measured ones (`num_requests`, or the counts of
    every phase), with their media files written and their arrival times and phases set. Under
    `size_hints_only()` no file is written and each media part carries its size instead."""
    hints_only = size_hints_only()
    requests: list[WorkloadRequest] = []
    specs: list[MediaSpec] = []
    for kind, count in ((WARMUP, cfg.warmup_requests), (MEASURED, cfg.total_requests)):
        for index in range(count):
            media = specs_of(kind, index)
            specs += media
            requests.append(make_request(cfg, kind, index, media, tokenizer, size_hints=hints_only))
    if not hints_only:
        write_media(specs)
    return assign_arrivals(requests, cfg)


def make_request(
    cfg: WorkloadConfig,
    kind: int,
    index: int,
    media: list[MediaSpec],
    tokenizer: Any = None,
    size_hints: bool = False,
) -> WorkloadRequest:
    """One user turn: a part per media file, then a text part of ~`input_len` tokens (if > 0)."""
    rng = seeded_rng(cfg.seed, PROMPT_STREAM, kind, index)
    text = make_prompt(rng, cfg.input_len, tokenizer)
    content = [media_part(spec, size_hints) for spec in media]
    if text:
        content.append({"type": "text", "text": text})
    return WorkloadRequest(
        id=f"warmup-{index}" if kind == WARMUP else f"req-{index}",
        messages=[{"role": "user", "content": content}],
        max_tokens=cfg.output_len,
        temperature=cfg.temperature,
        ignore_eos=cfg.ignore_eos,
        # a per-request sampling seed makes sampled runs repeatable; greedy needs none
        seed=int(rng.integers(2**31)) if cfg.temperature > 0 else None,
        warmup=kind == WARMUP,
    )


def item_count(cfg: WorkloadConfig, count: int, kind: int, index: int, *keys: int) -> int:
    """Items request `index` of `kind` carries of a modality whose count key holds `count`: exactly
    `count`, or with `cfg.random_count` a seeded uniform draw from 1 to `count` (`keys` tell the
    modalities of one request apart)."""
    if not cfg.random_count or count <= 1:
        return count
    return int(seeded_rng(cfg.seed, COUNT_STREAM, kind, index, *keys).integers(1, count + 1))


def item_tag(kind: int, index: int, k: int) -> str:
    """The part of a file name that says whose item it is: "req3-0", "warmup1-2"."""
    return f"{'warmup' if kind == WARMUP else 'req'}{index}-{k}"


def media_path(media_dir: Path, name: str) -> Path:
    """Absolute path of file `name` in `media_dir` (messages carry absolute paths)."""
    return (media_dir / name).absolute()


def format_number(value: float) -> str:
    """A number as file names write it: 2.0 -> "2", 29.97 -> "29.97" (exact, so names never
    collide for different values)."""
    return repr(float(value)).removesuffix(".0")
