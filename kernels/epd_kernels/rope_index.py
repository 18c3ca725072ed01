"""M-RoPE positions of a prompt, vectorised: what transformers' ``get_rope_index`` computes, as a pure
function of the token types, the items' grids / timing and a few config numbers.

transformers walks the prompt token by token in Python (groupby over a list, per-token merges for
audio-in-video); here every token's position comes from whole-array arithmetic over runs:
``qwen_vl_rope_index`` for Qwen2.5-VL and Qwen3-VL (integer positions), ``omni_rope_index`` for the
Qwen3-Omni thinker (float32 positions, fractional after videos; computed item by item in the same
float32 order as transformers, so the values are identical, not only close).

NumPy, not torch: these are a few dozen small host ops, and torch's intra-op threads cost more than
the arithmetic on a busy host (measured ~50x slower on 2 loaded cores).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

TEXT, IMAGE, VIDEO, AUDIO = 0, 1, 2, 3
F32 = np.float32


def _runs(types: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of equal values: (start [R], length [R], value [R])."""
    starts = np.concatenate([[0], np.flatnonzero(types[1:] != types[:-1]) + 1])
    return starts, np.diff(starts, append=types.size), types[starts]


def _numpy(types: torch.Tensor | np.ndarray) -> np.ndarray:
    return (types.cpu().numpy() if isinstance(types, torch.Tensor) else np.asarray(types)).astype(np.int64)


def qwen_vl_rope_index(
    types: torch.Tensor | np.ndarray,  # [L] TEXT / IMAGE / VIDEO per token
    image_grids: Sequence[Sequence[int]],  # (t, h, w) per image, prompt order (patch units)
    video_grids: Sequence[Sequence[int]],  # (t, h, w) per video, prompt order
    spatial_merge: int,
    video_intervals: Sequence[float] | None = None,
    frames_apart: bool = False,
) -> tuple[torch.Tensor, int]:  # positions [3, L] int64, rope delta
    """Qwen2.5-VL / Qwen3-VL positions. Each run of image (video) tokens takes the next image (video)
    grid; its tokens get (start + floor(t * interval), start + h, start + w), text tokens start + i,
    and the next run starts ``max(h, w) / merge`` (vision) or its length (text) further on.

    ``video_intervals``: the temporal step per video (Qwen2.5-VL: tokens_per_second * second_per_grid,
    rounded to float32 as transformers does); ``frames_apart`` (Qwen3-VL): each temporal grid of a
    video is its own run, separated by its timestamp text, with temporal position 0.
    """
    types = _numpy(types)
    num_tokens = types.size
    if num_tokens == 0:
        return torch.zeros(3, 0, dtype=torch.long), 0
    starts, lengths, run_types = _runs(types)
    vid_grids = np.asarray(video_grids, dtype=np.int64).reshape(-1, 3)
    vid_steps = np.ones(len(vid_grids), F32) if video_intervals is None else np.asarray(video_intervals, F32)
    if frames_apart:  # one (1, h, w) grid per temporal grid
        vid_steps = np.repeat(vid_steps, vid_grids[:, 0])
        vid_grids = np.repeat(vid_grids, vid_grids[:, 0], axis=0)
        vid_grids[:, 0] = 1
    grids = np.ones((run_types.size, 3), np.int64)
    intervals = np.ones(run_types.size, F32)
    for kind, name, kind_grids in (
        (IMAGE, "image", np.asarray(image_grids, dtype=np.int64).reshape(-1, 3)),
        (VIDEO, "video", vid_grids),
    ):
        is_kind = run_types == kind
        if int(is_kind.sum()) != len(kind_grids):
            raise ValueError(f"{int(is_kind.sum())} {name} runs in the prompt but {len(kind_grids)} {name} grids")
        grids[is_kind] = kind_grids
        if kind == VIDEO:
            intervals[is_kind] = vid_steps
    is_text = run_types == TEXT
    llm = np.stack([grids[:, 0], grids[:, 1] // spatial_merge, grids[:, 2] // spatial_merge], axis=1)  # [R, 3]
    llm[is_text] = 1
    if not np.array_equal(lengths[~is_text], llm[~is_text].prod(-1)):
        raise ValueError("a vision run's token count does not match its grid (t * h/merge * w/merge)")
    advance = np.where(is_text, lengths, llm[:, 1:].max(-1))
    run_pos = np.cumsum(advance) - advance  # [R] first position of each run

    run_of = np.repeat(np.arange(run_types.size), lengths)  # [L]
    offset = np.arange(num_tokens) - starts[run_of]  # index inside the run
    grid_w = llm[run_of, 2]
    per_frame = llm[run_of, 1] * grid_w
    t_pos = (offset // per_frame).astype(F32) * intervals[run_of]  # float32 product, as transformers
    text = is_text[run_of]
    positions = (
        np.stack(
            [
                np.where(text, offset, t_pos.astype(np.int64)),  # truncation toward zero = torch's .long()
                np.where(text, offset, (offset % per_frame) // grid_w),
                np.where(text, offset, offset % grid_w),
            ]
        )
        + run_pos[run_of]
    )
    return torch.from_numpy(positions), int(positions.max()) + 1 - num_tokens


@dataclass(frozen=True, kw_only=True)
class OmniItem:
    """One media item of a Qwen3-Omni prompt, as its rope positions need it."""

    modality: str
    """``image``, ``video`` or ``audio``."""
    grid_thw: tuple[int, int, int] | None = None
    second_per_grid: float | None = None
    audio_seqlen: int | None = None
    """Mel frames of the item's audio (an audio clip, or a video's own track)."""


def omni_audio_tokens(mel_frames: int, n_window: int) -> int:
    """Audio tokens of ``mel_frames`` mel frames (the audio tower's three stride-2 convs per 2*n_window chunk)."""
    chunk = n_window * 2
    rest = mel_frames % chunk
    feat = (rest - 1) // 2 + 1
    return ((feat - 1) // 2 + 1 - 1) // 2 + 1 + (mel_frames // chunk) * 13


def omni_rope_index(
    types: torch.Tensor | np.ndarray,  # [L] TEXT / IMAGE / VIDEO / AUDIO per token
    items: Sequence[OmniItem],  # prompt order
    spatial_merge: int,
    position_id_per_seconds: float,
    n_window: int,
) -> tuple[torch.Tensor, float]:  # positions [3, L] float32, rope delta
    """Qwen3-Omni thinker positions. Each item is a maximal run of non-text tokens between its 1
    start/end text tokens (2 for a video with its audio track). Text continues from the previous
    chunk's maximum + 1; audio is 1-D; image/video are 3-D with temporal step ``second_per_grid *
    position_id_per_seconds``; a video with its audio track interleaves the two by time (video
    first on ties). Float32 throughout, chunk by chunk in transformers' order of operations."""
    types = _numpy(types)
    num_tokens = types.size
    spans: list[tuple[int, int]] = []
    if num_tokens:
        starts, lengths, is_media = _runs((types != TEXT).astype(np.int64))
        spans = [(int(s), int(n)) for s, n, m in zip(starts, lengths, is_media, strict=True) if m]
    if len(spans) != len(items):
        raise ValueError(f"{len(spans)} media runs in the prompt but {len(items)} items")
    chunks: list[np.ndarray] = []  # [3, n] float32 each, in prompt order
    cursor = 0
    for (start, length), item in zip(spans, items, strict=True):
        edge = 2 if _audio_in_video(item) else 1  # start/end tokens of the item's span
        text_len = start - edge - cursor
        if text_len < 0 or start + length + edge > num_tokens:
            raise ValueError(f"item {item.modality!r} at token {start} lacks its start/end tokens")
        pos = chunks[-1].max() + F32(1) if chunks else F32(0)
        if text_len:
            chunks.append(_line(text_len, pos))
            pos = F32(pos + F32(text_len))
        chunks.append(_line(edge, pos))
        pos = F32(pos + F32(edge))
        content, last = _omni_content(item, pos, spatial_merge, position_id_per_seconds, n_window)
        if content.shape[1] != length:
            raise ValueError(
                f"{item.modality} item at token {start}: {length} tokens, its grid/audio says {content.shape[1]}"
            )
        chunks.append(content)
        chunks.append(_line(edge, last.max() + F32(1)))
        cursor = start + length + edge
    if cursor < num_tokens:
        chunks.append(_line(num_tokens - cursor, chunks[-1].max() + F32(1) if chunks else F32(0)))
    positions = np.concatenate(chunks, axis=1) if chunks else np.zeros((3, 0), F32)
    delta = float(positions.max() + F32(1) - F32(num_tokens)) if num_tokens else 0.0
    return torch.from_numpy(positions), delta


def _audio_in_video(item: OmniItem) -> bool:
    return item.modality == "video" and item.audio_seqlen is not None


def _line(n: int, start: np.float32) -> np.ndarray:
    """n text positions from ``start`` on all three axes: [3, n] float32."""
    return np.broadcast_to(np.arange(n, dtype=F32) + F32(start), (3, n))


def _omni_vision(item: OmniItem, start: np.float32, merge: int, per_second: float) -> np.ndarray:
    grid_t, grid_h, grid_w = (int(x) for x in item.grid_thw)
    llm_h, llm_w = grid_h // merge, grid_w // merge
    if item.modality == "image":  # transformers: (arange(t) * 1 * per_second).float()
        t_index = (np.arange(grid_t) * per_second).astype(F32)
    else:  # transformers: arange(t) * float32(second_per_grid) * per_second, in float32
        t_index = (np.arange(grid_t, dtype=F32) * F32(item.second_per_grid)) * F32(per_second)
    per_frame = llm_h * llm_w
    t = np.repeat(t_index, per_frame)
    h = np.tile(np.repeat(np.arange(llm_h, dtype=F32), llm_w), grid_t)
    w = np.tile(np.arange(llm_w, dtype=F32), llm_h * grid_t)
    return np.stack([t, h, w]) + F32(start)


def _omni_content(
    item: OmniItem, start: np.float32, merge: int, per_second: float, n_window: int
) -> tuple[np.ndarray, np.ndarray]:
    """(positions of the item's run [3, n], the last chunk transformers appended for it)."""
    if item.modality == "audio":
        audio = _line(omni_audio_tokens(item.audio_seqlen, n_window), start)
        return audio, audio
    video = _omni_vision(item, start, merge, per_second)
    if not _audio_in_video(item):
        return video, video
    audio = _line(omni_audio_tokens(item.audio_seqlen, n_window), start)
    both = np.concatenate([video, audio], axis=1)
    # two sorted lists merged by time, video first on ties = a stable sort of [video, audio]
    order = np.argsort(both[0], kind="stable")
    merged = both[:, order]
    from_video = order < video.shape[1]
    differs = np.flatnonzero(from_video != from_video[-1])
    tail_start = int(differs[-1]) + 1 if differs.size else 0  # the leftover of the list not exhausted
    return merged, merged[:, tail_start:]
