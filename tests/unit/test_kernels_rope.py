"""Vectorised M-RoPE positions (epd_kernels.rope_index, wired into the families' ``positions``) equal
transformers' ``get_rope_index`` on randomised prompt layouts: Qwen2.5-VL (images, videos with
seconds per grid), Qwen3-VL (timestamped videos), Qwen3-Omni (images, videos, audio, audio-in-video)."""

from __future__ import annotations

import random

import pytest
import torch

from epd.models import AUDIO, IMAGE, TEXT, VIDEO, ItemMeta
from epd.models.families.qwen2_5_vl import Qwen25Language
from epd.models.families.qwen3_omni import OmniLanguage
from epd_kernels.rope_index import omni_audio_tokens, qwen_vl_rope_index

SEEDS = range(12)


def _hf_config(family: str):
    from transformers import AutoConfig

    from epd.tiny import cached_tiny

    return AutoConfig.from_pretrained(cached_tiny(family))


@pytest.fixture(scope="module")
def vl_models():
    """The inner HF models (weightless, on meta) whose get_rope_index is the reference."""
    from transformers import AutoModelForImageTextToText

    out = {}
    for family in ("qwen2_5_vl", "qwen3_vl"):
        cfg = _hf_config(family)
        with torch.device("meta"):
            out[family] = (cfg, AutoModelForImageTextToText.from_config(cfg).model)
    return out


@pytest.fixture(scope="module")
def omni_thinker():
    from transformers.models.qwen3_omni_moe import Qwen3OmniMoeThinkerForConditionalGeneration

    cfg = _hf_config("qwen3_omni").thinker_config
    with torch.device("meta"):
        return cfg, Qwen3OmniMoeThinkerForConditionalGeneration(cfg)


def _language(cls, hf_config):
    side = object.__new__(cls)  # positions must read nothing but hf_config
    side.hf_config = hf_config
    return side


def _text(rng: random.Random, ids: list[int], types: list[int], lo: int = 1, hi: int = 6) -> None:
    n = rng.randint(lo, hi)
    ids += [rng.randrange(5, 500) for _ in range(n)]
    types += [TEXT] * n


def _vl_layout(rng: random.Random, qwen3: bool) -> tuple[list[int], list[int], list[ItemMeta]]:
    ids: list[int] = []
    types: list[int] = []
    items: list[ItemMeta] = []
    for _ in range(rng.randint(1, 5)):
        _text(rng, ids, types)
        modality = rng.choice(["image", "video"])
        t = 1 if modality == "image" else rng.randint(1, 5)
        h, w = 2 * rng.randint(1, 9), 2 * rng.randint(1, 9)
        info = {"grid_thw": [t, h, w]}
        kind = IMAGE if modality == "image" else VIDEO
        if modality == "video" and not qwen3:
            info["second_per_grid"] = float(torch.tensor(2 / rng.uniform(0.3, 6.0), dtype=torch.float32))
        frames = t if (qwen3 and modality == "video") else 1
        for frame in range(frames):  # Qwen3-VL: one run per temporal grid behind its timestamp text
            if frame:
                _text(rng, ids, types, 1, 3)
            n = (t // frames) * (h // 2) * (w // 2)
            ids += [700] * n
            types += [kind] * n
        items.append(ItemMeta(modality=modality, token_ids=[], token_types=[], info=info))
    _text(rng, ids, types, 0, 6)
    return ids, types, items


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("seed", SEEDS)
def test_vl_positions_equal_transformers(vl_models, family, seed):
    cfg, inner = vl_models[family]
    ids, types, items = _vl_layout(random.Random(seed), qwen3=family == "qwen3_vl")
    images = [it.info["grid_thw"] for it in items if it.modality == "image"]
    videos = [it for it in items if it.modality == "video"]
    timing = {}
    if videos and family == "qwen2_5_vl":
        timing["second_per_grid_ts"] = torch.tensor([v.info["second_per_grid"] for v in videos])
    ref, ref_delta = inner.get_rope_index(
        torch.tensor([ids]),
        mm_token_type_ids=torch.tensor([types]),
        image_grid_thw=torch.tensor(images) if images else None,
        video_grid_thw=torch.tensor([v.info["grid_thw"] for v in videos]) if videos else None,
        **timing,
    )
    pos, delta = _language(Qwen25Language, cfg).positions(torch.tensor(ids), torch.tensor(types), items)
    assert pos.dtype == torch.long
    assert torch.equal(pos, ref[:, 0])
    assert delta == int(ref_delta)


def test_vl_mismatched_grid_is_refused():
    types = torch.tensor([TEXT, IMAGE, IMAGE, IMAGE, TEXT])
    with pytest.raises(ValueError, match="grid"):
        qwen_vl_rope_index(types, [[1, 2, 2]], [], spatial_merge=2)  # 1 token per grid, 3 in the run
    with pytest.raises(ValueError, match="image runs"):
        qwen_vl_rope_index(types, [], [], spatial_merge=2)


def _omni_layout(rng: random.Random, cfg) -> tuple[list[int], list[int], list[ItemMeta], bool]:
    merge, n_window = cfg.vision_config.spatial_merge_size, cfg.audio_config.n_window
    vs, ve, as_, ae = cfg.vision_start_token_id, 644, cfg.audio_start_token_id, 649
    with_audio = rng.random() < 0.5  # all videos of a request carry their audio track, or none does
    ids: list[int] = []
    types: list[int] = []
    items: list[ItemMeta] = []
    for _ in range(rng.randint(1, 4)):
        _text(rng, ids, types, 1, 4)
        modality = rng.choice(["image", "video", "audio"])
        info: dict = {}
        if modality in ("image", "video"):
            t = 1 if modality == "image" else rng.randint(1, 6)
            info["grid_thw"] = [t, 2 * rng.randint(1, 6), 2 * rng.randint(1, 6)]
            n_vis = t * (info["grid_thw"][1] // merge) * (info["grid_thw"][2] // merge)
        if modality == "video":
            info["second_per_grid"] = float(torch.tensor(2 / rng.uniform(0.5, 5.0), dtype=torch.float32))
        if modality == "audio" or (modality == "video" and with_audio):
            # short tracks too: a video can then outgrow its audio in space (the transformers corner where
            # the next text starts after the audio's end, not after the video's largest position)
            info["audio_seqlen"] = rng.choice([rng.randint(10, 60), rng.randint(30, 700)])
            n_aud = omni_audio_tokens(info["audio_seqlen"], n_window)
        if modality == "image":
            span = [(vs, TEXT)] + [(cfg.image_token_id, IMAGE)] * n_vis + [(ve, TEXT)]
        elif modality == "audio":
            span = [(as_, TEXT)] + [(cfg.audio_token_id, AUDIO)] * n_aud + [(ae, TEXT)]
        elif not with_audio:
            span = [(vs, TEXT)] + [(cfg.video_token_id, VIDEO)] * n_vis + [(ve, TEXT)]
        else:
            body = [(cfg.video_token_id, VIDEO)] * n_vis + [(cfg.audio_token_id, AUDIO)] * n_aud
            rng.shuffle(body)
            span = [(vs, TEXT), (as_, TEXT)] + body + [(ae, TEXT), (ve, TEXT)]
        ids += [tok for tok, _ in span]
        types += [typ for _, typ in span]
        items.append(ItemMeta(modality=modality, token_ids=[], token_types=[], info=info))
    _text(rng, ids, types, 0, 4)
    return ids, types, items, with_audio


def _omni_reference(thinker, ids: list[int], items: list[ItemMeta], with_audio: bool):
    images = [it.info["grid_thw"] for it in items if it.modality == "image"]
    videos = [it for it in items if it.modality == "video"]
    audio_lens = [it.info["audio_seqlen"] for it in items if "audio_seqlen" in it.info]
    return thinker.get_rope_index(
        torch.tensor([ids]),
        image_grid_thw=torch.tensor(images) if images else None,
        video_grid_thw=torch.tensor([v.info["grid_thw"] for v in videos]) if videos else None,
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        use_audio_in_video=with_audio and bool(videos),
        audio_seqlens=torch.tensor(audio_lens) if audio_lens else None,
        second_per_grids=torch.tensor([v.info["second_per_grid"] for v in videos]) if videos else None,
    )


@pytest.mark.parametrize("seed", range(40))
def test_omni_positions_equal_transformers(omni_thinker, seed):
    cfg, thinker = omni_thinker
    ids, types, items, with_audio = _omni_layout(random.Random(seed), cfg)
    ref, ref_delta = _omni_reference(thinker, ids, items, with_audio)
    pos, delta = _language(OmniLanguage, cfg).positions(torch.tensor(ids), torch.tensor(types), items)
    assert pos.dtype == torch.float32
    assert torch.equal(pos, ref[:, 0])  # bit for bit, fractional positions included
    assert delta == float(ref_delta)


def test_omni_video_wider_than_its_short_audio(omni_thinker):
    """One frame 6x6 tokens wide with 4 audio tokens: the text after the item continues from the
    audio's last position (transformers' rule), not from the video's largest one."""
    cfg, thinker = omni_thinker
    n_aud = omni_audio_tokens(30, cfg.audio_config.n_window)
    body = [(cfg.video_token_id, VIDEO)] * 36 + [(cfg.audio_token_id, AUDIO)] * n_aud
    span = [(7, TEXT), (cfg.vision_start_token_id, TEXT), (cfg.audio_start_token_id, TEXT), *body]
    span += [(649, TEXT), (644, TEXT), (8, TEXT), (9, TEXT)]
    ids, types = [tok for tok, _ in span], [typ for _, typ in span]
    info = {"grid_thw": [1, 12, 12], "second_per_grid": 2.0, "audio_seqlen": 30}
    items = [ItemMeta(modality="video", token_ids=[], token_types=[], info=info)]
    ref, ref_delta = _omni_reference(thinker, ids, items, True)
    pos, delta = _language(OmniLanguage, cfg).positions(torch.tensor(ids), torch.tensor(types), items)
    assert torch.equal(pos, ref[:, 0]) and delta == float(ref_delta)
    end = 3 + 36 + n_aud  # the item's first end token
    assert pos[0, end] < pos[:, 3 : 3 + 36].max() + 1  # the corner is there: it sits inside the video's width


def test_omni_fractional_positions_occur(omni_thinker):
    """The randomised layouts do reach fractional positions (the case where float32 order matters)."""
    cfg, _ = omni_thinker
    fractional = 0
    for seed in range(24):
        ids, types, items, _ = _omni_layout(random.Random(seed), cfg)
        pos, _ = _language(OmniLanguage, cfg).positions(torch.tensor(ids), torch.tensor(types), items)
        fractional += int((pos != pos.round()).any())
    assert fractional >= 5
