"""M-RoPE positions on the host: epd's vectorised functions against transformers' ``get_rope_index``.

Layouts: Qwen2.5-VL, 8 images of 1080p with text around them; a 2-minute video at 2 fps (120
temporal grids) for Qwen2.5-VL (seconds per grid), Qwen3-VL (a timestamp before every grid) and
Qwen3-Omni with its audio track interleaved (13 audio tokens a second). The floor is one host copy
of the [3, L] positions.
"""

from __future__ import annotations

import numpy as np
import torch

from epd_kernels.bench_util import host_ms
from epd_kernels.rope_index import AUDIO, IMAGE, TEXT, VIDEO, OmniItem, omni_audio_tokens, omni_rope_index
from epd_kernels.rope_index import qwen_vl_rope_index as vl_index

MERGE = 2
VIDEO_GRID = (120, 24, 42)  # 2 minutes at 2 fps, 336x588 frames after the processor's per-frame budget


def _reference_models():
    """transformers' models whose ``get_rope_index`` is the baseline: the released configs' defaults
    (Qwen2.5-VL with its 2 tokens per second), built weightless on the meta device."""
    from transformers import AutoModelForImageTextToText, Qwen2_5_VLConfig, Qwen3VLConfig
    from transformers.models.qwen3_omni_moe import (
        Qwen3OmniMoeThinkerConfig,
        Qwen3OmniMoeThinkerForConditionalGeneration,
    )

    thinker = Qwen3OmniMoeThinkerConfig()
    thinker.vision_start_token_id = 151652  # the thinker's get_rope_index reads it; the default config lacks it
    with torch.device("meta"):
        return {
            "qwen2_5_vl": AutoModelForImageTextToText.from_config(
                Qwen2_5_VLConfig(vision_config={"tokens_per_second": 2})
            ).model,
            "qwen3_vl": AutoModelForImageTextToText.from_config(Qwen3VLConfig()).model,
            "omni": Qwen3OmniMoeThinkerForConditionalGeneration(thinker),
        }


def _runs(parts: list[tuple[int, int]]) -> torch.Tensor:
    return torch.cat([torch.full((n,), kind, dtype=torch.long) for kind, n in parts])


def bench_rope(reps: int = 5) -> list[dict]:
    models = _reference_models()
    rows = []

    # Qwen2.5-VL: 8 x 1080p images (78x138 patches → 2691 tokens each)
    grid = (1, 78, 138)
    per_image = grid[1] * grid[2] // MERGE**2
    types = _runs([(TEXT, 20)] + [(IMAGE, per_image), (TEXT, 12)] * 8)
    grids = torch.tensor([grid] * 8)
    inner = models["qwen2_5_vl"]
    rows.append(
        _row(
            "Qwen2.5-VL, 8 images 1080p",
            types,
            lambda: inner.get_rope_index(types[None], mm_token_type_ids=types[None], image_grid_thw=grids),
            lambda: vl_index(types, grids.tolist(), [], MERGE),
            reps,
        )
    )

    # Qwen2.5-VL: one 2-minute video, one run, time positions from seconds per grid
    per_grid = VIDEO_GRID[1] * VIDEO_GRID[2] // MERGE**2
    types = _runs([(TEXT, 20), (VIDEO, VIDEO_GRID[0] * per_grid), (TEXT, 12)])
    vgrid = torch.tensor([VIDEO_GRID])
    steps = torch.tensor([1.0])
    rows.append(
        _row(
            "Qwen2.5-VL, 2-min video",
            types,
            lambda: inner.get_rope_index(
                types[None], mm_token_type_ids=types[None], video_grid_thw=vgrid, second_per_grid_ts=steps
            ),
            lambda: vl_index(types, [], vgrid.tolist(), MERGE, video_intervals=(steps * 2).tolist()),
            reps,
        )
    )

    # Qwen3-VL: the same video, a timestamp text before each of its 120 grids
    types = _runs([(TEXT, 20)] + [(TEXT, 6), (VIDEO, per_grid), (TEXT, 1)] * VIDEO_GRID[0] + [(TEXT, 12)])
    inner3 = models["qwen3_vl"]
    rows.append(
        _row(
            "Qwen3-VL, 2-min video (timestamps)",
            types,
            lambda: inner3.get_rope_index(types[None], mm_token_type_ids=types[None], video_grid_thw=vgrid),
            lambda: vl_index(types, [], vgrid.tolist(), MERGE, frames_apart=True),
            reps,
        )
    )

    # Qwen3-Omni: the same video with its audio track interleaved (transformers merges token by token)
    thinker = models["omni"]
    cfg = thinker.config
    mel = 120 * 100  # 100 mel frames a second
    n_aud = omni_audio_tokens(mel, cfg.audio_config.n_window)
    n_vid = VIDEO_GRID[0] * per_grid
    types = _runs([(TEXT, 22), (VIDEO, n_vid), (AUDIO, n_aud), (TEXT, 14)])  # one media run: order inside is free
    ids = torch.full_like(types, 5)
    ids[20], ids[21] = cfg.vision_start_token_id, cfg.audio_start_token_id
    ids[types == VIDEO], ids[types == AUDIO] = cfg.video_token_id, cfg.audio_token_id
    item = OmniItem(modality="video", grid_thw=VIDEO_GRID, second_per_grid=1.0, audio_seqlen=mel)
    rows.append(
        _row(
            "Qwen3-Omni, 2-min video + audio",
            types,
            lambda: thinker.get_rope_index(
                ids[None],
                video_grid_thw=vgrid,
                attention_mask=torch.ones_like(ids)[None],
                use_audio_in_video=True,
                audio_seqlens=torch.tensor([mel]),
                second_per_grids=torch.tensor([1.0]),
            ),
            lambda: omni_rope_index(types, [item], MERGE, cfg.position_id_per_seconds, cfg.audio_config.n_window),
            reps,
        )
    )
    return rows


def _row(name: str, types: torch.Tensor, reference, ours, reps: int) -> dict:
    ref_pos, ref_delta = reference()
    pos, delta = ours()
    equal = torch.equal(pos.to(ref_pos.dtype), ref_pos[:, 0]) and float(delta) == float(ref_delta)
    ref_ms = host_ms(reference, warmup=1, reps=reps)
    ms = host_ms(ours, warmup=1, reps=reps)
    src, dst = pos.numpy(), np.empty_like(pos.numpy())
    floor_ms = host_ms(lambda: np.copyto(dst, src), warmup=2, reps=20)  # one host write of the positions
    return {
        "kernel": f"M-RoPE {name} ({types.numel()} tokens)",
        "variant": "epd vectorised",
        "ms": ms,
        "baseline_ms": ref_ms,
        "vs_baseline": ref_ms / ms,
        "floor_ms": floor_ms,
        "equal": equal,
    }
